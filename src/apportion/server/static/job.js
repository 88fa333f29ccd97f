// The job view (why a job waits, node by node) and the fragmentation panel.

import { asWritten, human, humanVector } from "./units.js";

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("data")) el.setAttribute(key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase()), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const VERDICT = { fits: "ready", busy: "warning", condition: "warning", never: "unhealthy" };

export function jobResources(job) {
  const spec = job.spec || {};
  const res = spec.resources || (spec.tasks && spec.tasks[0] && spec.tasks[0].resources) || {};
  return Object.entries(res).map(([k, v]) => `${k}=${asWritten(k, v)}`).join(" ");
}

function nodeRows(explain) {
  return (explain.nodes || []).map((v) => h("tr", {
    dataTestid: "explain-node", dataNode: v.node, dataNow: v.now, dataEver: v.ever ? "1" : "0",
  },
  h("td", {}, v.node),
  h("td", {}, h("span", { class: `badge ${VERDICT[v.now] || ""}` }, v.now)),
  h("td", {}, v.reason || (v.now === "fits" ? "fits now" : "")),
  h("td", {}, v.ever ? "yes" : ["no: ", v.never || ""])));
}

/** The job's page: what it asked for, where it runs, and (while it waits)
 * each node's verdict; ``explain`` is null for a job that does not wait. */
export function renderJobView(job, explain) {
  const head = jobHead(job);
  if (!explain) {
    const why = job.reason ? ` (${job.reason})` : "";
    return [...head, h("p", { class: "muted", dataTestid: "explain-summary" },
      `This job is ${job.state}${why}: it does not wait for a node.`)];
  }
  const more = explain.nodes_more
    ? h("p", { class: "muted", dataTestid: "explain-more" }, `and ${explain.nodes_more} more node(s): ` +
      Object.entries(explain.nodes_more_counts || {}).map(([k, n]) => `${n} ${k}`).join(", "))
    : null;
  return [
    ...head,
    h("p", { dataTestid: "explain-summary" }, explain.summary || explain.status,
      explain.waiting_for ? h("span", { class: "muted" }, ` — ${explain.waiting_for}`) : null),
    (explain.hints || []).length
      ? h("ul", { class: "hints" }, explain.hints.map((t) => h("li", {}, t))) : null,
    h("table", { dataTestid: "explain-nodes" },
      h("thead", {}, h("tr", {}, ["node", "now", "reason now", "could ever fit"]
        .map((c) => h("th", {}, c)))),
      h("tbody", {}, nodeRows(explain))),
    more,
  ].filter(Boolean);
}

function jobHead(job) {
  const live = ["scheduled", "starting", "running"];
  const placed = (job.tasks || []).filter((t) => t.node && live.includes(t.state))
    .map((t) => `${t.index}→${t.node}`);
  return [
    h("h2", {}, `Job ${job.name || job.id.slice(0, 10)} `,
      h("span", { class: "muted mono" }, job.id), " ",
      h("span", { class: `badge ${job.state === "running" ? "ready" : "warning"}` }, job.state)),
    h("p", { dataTestid: "job-summary" },
      h("b", {}, jobResources(job) || "no resources"),
      ` · queue ${job.queue} · owner ${job.owner || "–"}`,
      placed.length ? ` · on ${placed.join(", ")}` : ""),
  ];
}

/** Free capacity per resource, how scattered it is, and which shapes fit. */
export function renderFragmentation(body) {
  const resources = body.resources.map((r) => h("tr", {
    dataTestid: "fragmentation", dataResource: r.resource,
  },
  h("td", {}, r.resource),
  h("td", {}, human(r.resource, r.free_base)),
  h("td", {}, human(r.resource, r.largest_block_base)),
  h("td", {}, r.nodes_with_free),
  h("td", { title: "1 - largest block / free" }, `${Math.round(r.fragmentation_index * 100)}%`)));
  const shapes = body.shapes.map((s) => h("tr", { dataTestid: "shape" },
    h("td", { class: "mono" }, humanVector(s.shape_base)),
    h("td", {}, s.fits), h("td", {}, s.fits_if_whole)));
  if (!resources.length) return [h("p", { class: "empty" }, "No ready node has free capacity.")];
  return [
    h("table", {}, h("thead", {}, h("tr", {}, ["resource", "free", "largest on one node",
      "nodes with free", "fragmented"].map((c) => h("th", {}, c)))), h("tbody", {}, resources)),
    h("h3", { class: "sub" }, `How many fit, by shape `, h("span", { class: "muted" }, `(${body.shapes_from})`)),
    h("table", {}, h("thead", {}, h("tr", {}, ["shape", "fit now", "would fit if whole"]
      .map((c) => h("th", {}, c)))), h("tbody", {}, shapes)),
  ];
}
