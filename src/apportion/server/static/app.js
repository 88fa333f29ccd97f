// The apportion dashboard: plain ES module, no build step, no network but
// this server. The token is kept in sessionStorage (this tab only) and sent as
// a bearer header on every call, the event stream included: the stream is
// read with fetch() and a ReadableStream, not EventSource, so the token never
// appears in a URL. `apportion dashboard` opens /#code=ONE-TIME-CODE: the code
// sits in the fragment (never sent to a server or its logs), is taken out of
// the address bar at once, and is exchanged for a session token.

import { lineChart } from "./chart.js";
import { jobResources, renderFragmentation, renderJobView } from "./job.js";
import { human } from "./units.js";

const TOKEN_KEY = "apportion.token";
const ENDS_KEY = "apportion.session_ends";
const REFRESH_DEBOUNCE_MS = 250;
const SAFETY_REFRESH_MS = 10000;
const HISTORY_REFRESH_MS = 30000;
const WAITING = ["pending", "preempted"];

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  lastEventId: 0,
  events: 0,
  abort: null,
  running: false,
  refreshTimer: null,
  timers: [],
  resources: [],
  job: null,
};

// -- DOM helpers -------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") el.setAttribute("style", value);
    else if (key.startsWith("data")) el.setAttribute(key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase()), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function fill(id, ...children) {
  $(id).replaceChildren(...children.flat());
}

const pct = (share) => `${Math.round(share * 100)}%`;
const since = (iso) => {
  if (!iso) return "";
  const t = typeof iso === "number" ? iso * 1000 : Date.parse(iso);
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
};

function barClass(share) {
  return share >= 0.98 ? "bar full" : share >= 0.85 ? "bar hot" : "bar";
}

function bar(share) {
  return h("div", { class: barClass(share) },
    h("span", { style: `width:${Math.min(100, share * 100).toFixed(1)}%` }));
}

// -- the API ---------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, { allow404 = false } = {}) {
  const r = await fetch(path, {
    headers: { Authorization: `Bearer ${state.token}` },
    cache: "no-store",
  });
  if (r.status === 401) throw new Unauthorized("token not accepted");
  if (allow404 && r.status === 404) return null;
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// -- sign in and out ------------------------------------------------------------------

function showLogin(message = "") {
  stop();
  $("app-view").hidden = true;
  $("logout").hidden = true;
  $("window-label").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

async function signIn(token) {
  state.token = token;
  try {
    const who = await api("/api/v1/whoami");
    $("who").textContent = `${who.name} (${who.role})`;
  } catch (err) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(err instanceof Unauthorized ? "That token was not accepted." : `Cannot reach the server: ${err.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("logout").hidden = false;
  $("window-label").hidden = false;
  start();
}

function signOut(message = "") {
  const ends = Number(sessionStorage.getItem(ENDS_KEY) || 0);
  if (message && ends && Date.now() >= ends) {
    message = "The session has ended; run 'apportion dashboard' for a new link.";
  }
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(ENDS_KEY);
  $("who").textContent = "";
  state.token = null;
  showLogin(message);
}

/** Exchange the one-time code `apportion dashboard` put in the URL for a session. */
async function redeem(code) {
  let r;
  try {
    r = await fetch("/api/v1/auth/session", {
      method: "POST", cache: "no-store", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code }),
    });
  } catch (err) {
    showLogin(`Cannot reach the server: ${err.message}`);
    return;
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { showLogin(body.message || `The sign-in link was refused (HTTP ${r.status}).`); return; }
  sessionStorage.setItem(ENDS_KEY, String(Date.parse(body.expires_at)));
  signIn(body.token);
}

// -- live updates -------------------------------------------------------------------------

function setLive(mode, text) {
  const el = document.querySelector("[data-testid=live]");
  el.dataset.state = mode;
  el.textContent = text;
}

function start() {
  state.running = true;
  follow();
  refreshAll();
  refreshHistory();
  state.timers.push(setInterval(refreshAll, SAFETY_REFRESH_MS));
  state.timers.push(setInterval(refreshHistory, HISTORY_REFRESH_MS));
}

function stop() {
  state.running = false;
  if (state.abort) state.abort.abort();
  state.timers.forEach(clearInterval);
  state.timers = [];
  setLive("off", "offline");
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refreshAll();
  }, REFRESH_DEBOUNCE_MS);
}

function onMessage(block) {
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("id:")) id = Number(line.slice(3).trim());
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (id !== null && Number.isFinite(id)) state.lastEventId = id;
  if (!data.length) return;
  state.events += 1;
  window.dispatchEvent(new CustomEvent("apportion-event", { detail: JSON.parse(data.join("\n")) }));
  scheduleRefresh();
}

async function follow() {
  let delay = 500;
  while (state.running) {
    const ctrl = new AbortController();
    state.abort = ctrl;
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = String(state.lastEventId);
      const r = await fetch("/api/v1/events", { headers, signal: ctrl.signal, cache: "no-store" });
      if (r.status === 401) { signOut("The token is no longer accepted."); return; }
      if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
      setLive("on", "live");
      delay = 500;
      if (state.lastEventId) scheduleRefresh();  // a gap was replayed: catch up
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      if (!state.running) return;
    }
    if (!state.running) return;
    setLive("wait", "reconnecting");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// -- panels -------------------------------------------------------------------------------

async function refreshAll() {
  if (!state.running) return;
  try {
    const [byResource, byFacility, nodes, running, waiting, queues, alerts, frag] = await Promise.all([
      api("/api/v1/capacity/summary?group_by=resource"),
      api("/api/v1/capacity/summary?group_by=facility"),
      api("/api/v1/nodes"),
      api("/api/v1/jobs?state=running&limit=200"),
      api("/api/v1/jobs?state=pending&limit=200"),
      api("/api/v1/queues"),
      api("/api/v1/alerts?state=firing", { allow404: true }),
      api("/api/v1/capacity/fragmentation", { allow404: true }),
    ]);
    renderOverview(byResource, byFacility);
    renderNodes(nodes.nodes);
    renderJobs(running.jobs, waiting.jobs);
    renderQueues(queues.queues, running.jobs, waiting.jobs);
    renderAlerts(alerts);
    if (frag) fill("fragmentation", renderFragmentation(frag));
    if (state.job) await refreshJob();
    document.querySelector("[data-testid=updated]").textContent =
      `updated ${new Date().toLocaleTimeString()} · event ${state.lastEventId}`;
  } catch (err) {
    if (err instanceof Unauthorized) signOut("The token is no longer accepted.");
    else setLive("wait", "error: " + err.message);
  }
}

function renderOverview(byResource, byFacility) {
  state.resources = byResource.groups.map((g) => g.group);
  const cards = byResource.groups.map((g) => {
    const t = g.resources[g.group];
    return h("div", { class: "res", dataTestid: "resource", dataResource: g.group },
      h("h3", {}, h("span", {}, g.group), h("span", { class: "muted" },
        `${human(g.group, t.allocated_base)} of ${human(g.group, t.total_base)} · ${pct(t.allocated_share)}`)),
      bar(t.allocated_share),
      h("div", { class: "muted" },
        `${g.nodes} node${g.nodes === 1 ? "" : "s"} · ${human(g.group, t.available_base)} free`));
  });
  const resources = state.resources;
  const rows = byFacility.groups.map((g) => h("tr", { dataTestid: "facility", dataFacility: g.group },
    h("td", {}, g.group), h("td", {}, g.nodes),
    resources.map((r) => {
      const t = g.resources[r];
      return h("td", {}, t ? [bar(t.allocated_share),
        `${human(r, t.allocated_base)} / ${human(r, t.total_base)}`] : "–");
    })));
  fill("overview",
    cards.length ? h("div", { class: "resources" }, cards) : h("p", { class: "empty" }, "No nodes yet."),
    rows.length ? h("div", { class: "facilities" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "facility"), h("th", {}, "nodes"),
        resources.map((r) => h("th", {}, r)))),
      h("tbody", {}, rows))) : null);
}

function cellColor(node, share) {
  if (node.state === "down" || node.state === "suspect") return `hsl(220, 5%, ${80 - share * 30}%)`;
  const hue = node.health === "unhealthy" ? 2 : node.health === "degraded" ? 38 : 140;
  return `hsl(${hue}, ${40 + share * 20}%, ${90 - share * 54}%)`;
}

function nodeShare(node) {
  let share = 0;
  for (const [r, total] of Object.entries(node.resources_base)) {
    if (total > 0) share = Math.max(share, (node.allocated_base[r] || 0) / total);
  }
  return share;
}

function renderNodes(nodes) {
  $("nodes-count").textContent = `${nodes.length}`;
  if (!nodes.length) { fill("nodes", h("p", { class: "empty" }, "No nodes registered.")); return; }
  fill("nodes", nodes.map((node) => {
    const cells = [];
    for (const [resource, devices] of Object.entries(node.devices || {})) {
      for (const d of devices) {
        const held = Boolean(d.allocation_id);
        cells.push(h("div", {
          class: "cell", dataTestid: "device", dataResource: resource, dataHeld: held ? "1" : "0",
          style: `background:${cellColor(node, held ? 1 : 0)}`,
          title: `${node.name} ${resource} ${d.id}${d.model ? " · " + d.model : ""}` +
            (held ? ` · held by ${d.allocation_id.slice(0, 8)}` : " · free"),
        }, d.id.length <= 3 ? d.id : ""));
      }
    }
    const share = nodeShare(node);
    if (!cells.length) {
      cells.push(h("div", {
        class: "cell whole", dataTestid: "usage", style: `background:${cellColor(node, share)}`,
        title: Object.keys(node.resources_base).map((r) =>
          `${r}: ${human(r, node.allocated_base[r] || 0)} of ${human(r, node.resources_base[r])}`).join("\n"),
      }, pct(share)));
    }
    const facility = node.labels.facility ? ` · ${node.labels.facility}` : "";
    return h("div", {
      class: `node health-${node.health} state-${node.state}`, dataTestid: "node",
      dataNode: node.name, dataState: node.state, dataHealth: node.health,
      title: `${node.name}${facility}\n${node.state}, ${node.health}\nallocated ${pct(share)} (busiest resource)`,
    },
    h("header", {}, h("b", {}, node.name),
      h("span", {}, h("span", { class: `badge ${node.state}` }, node.state), " ",
        node.health !== "healthy" ? h("span", { class: `badge ${node.health}` }, node.health) : null)),
    h("div", { class: "cells" }, cells));
  }));
}

function renderJobs(running, waiting) {
  $("jobs-count").textContent = `${running.length} running · ${waiting.length} waiting`;
  const jobs = [...running, ...waiting];
  if (!jobs.length) { fill("jobs", h("p", { class: "empty" }, "No running or waiting jobs.")); return; }
  fill("jobs", h("table", {},
    h("thead", {}, h("tr", {}, ["job", "name", "state", "owner", "queue", "resources", "since"]
      .map((c) => h("th", {}, c)))),
    h("tbody", {}, jobs.map((j) => h("tr", {
      dataTestid: "job", dataJob: j.id, dataState: j.state, class: "link",
      title: "why it runs where it does, or waits: node by node",
    },
      h("td", { class: "mono", title: j.id }, j.id.slice(0, 10)),
      h("td", {}, j.name || ""),
      h("td", {}, h("span", { class: `badge ${j.state === "running" ? "ready" : "warning"}` }, j.state)),
      h("td", {}, j.owner || ""),
      h("td", {}, j.queue),
      h("td", { class: "mono" }, jobResources(j)),
      h("td", {}, since(j.started_at || j.submitted_at)))))));
}

function renderQueues(queues, running, waiting) {
  const count = (jobs, q) => jobs.filter((j) => j.queue === q).length;
  fill("queues", h("table", {},
    h("thead", {}, h("tr", {}, ["queue", "waiting", "running", "weight", "in use"].map((c) => h("th", {}, c)))),
    h("tbody", {}, queues.map((q) => h("tr", { dataTestid: "queue", dataQueue: q.name },
      h("td", {}, q.name), h("td", {}, count(waiting, q.name)), h("td", {}, count(running, q.name)),
      h("td", {}, q.weight),
      h("td", { class: "mono" }, Object.entries(q.usage_base || {})
        .map(([k, v]) => `${k}=${human(k, v)}`).join(" ") || "–"))))));
}

function renderAlerts(body) {
  if (body === null) {
    $("alerts-count").textContent = "";
    fill("alerts", h("p", { class: "empty" }, "Alerts are not available on this server."));
    return;
  }
  const alerts = body.alerts || [];
  $("alerts-count").textContent = `${alerts.length}`;
  if (!alerts.length) { fill("alerts", h("p", { class: "empty", dataTestid: "no-alerts" }, "Nothing is firing.")); return; }
  fill("alerts", h("ul", { class: "alerts" }, alerts.map((a) => h("li", {
    class: a.severity, dataTestid: "alert", dataRule: a.rule, dataSeverity: a.severity,
  },
  h("div", {}, h("span", { class: `badge ${a.severity}` }, a.severity), " ", h("b", {}, a.rule), " ",
    h("span", { class: "when" }, `for ${since(a.started_at)}`)),
  h("div", {}, a.message)))));
}

// -- one job ------------------------------------------------------------------------------

async function openJob(id) {
  state.job = id;
  $("job-panel").hidden = false;
  await refreshJob();
  $("job-panel").scrollIntoView({ block: "nearest" });
}

async function refreshJob() {
  const id = state.job;
  try {
    const job = await api(`/api/v1/jobs/${encodeURIComponent(id)}?tasks_limit=50`);
    // Only a waiting job is explained (the API answers 422 for the others).
    const explain = WAITING.includes(job.state)
      ? await api(`/api/v1/jobs/${encodeURIComponent(id)}/explain?nodes=true&nodes_limit=50`)
      : null;
    if (state.job === id) fill("job", renderJobView(job, explain));
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    fill("job", h("p", { class: "empty" }, `Job ${id}: ${err.message}`));
  }
}

// -- history ------------------------------------------------------------------------------

async function refreshHistory() {
  if (!state.running) return;
  const windowS = Number($("window").value);
  const q = (params) => api("/api/v1/history?" + new URLSearchParams({ window_seconds: windowS, ...params }));
  try {
    const resources = state.resources.length ? state.resources
      : (await api("/api/v1/capacity/summary?group_by=resource")).groups.map((g) => g.group);
    const charts = await Promise.all(resources.map(async (resource) => {
      const [cluster, facilities] = await Promise.all([
        q({ metric: "utilization", resource }),
        q({ metric: "utilization", resource, facility: "*" }),
      ]);
      const series = [
        ...cluster.series.map((s) => ({ ...s, name: "cluster", strong: true })),
        ...facilities.series.map((s) => ({ ...s, name: s.labels.facility || "(no facility)" })),
      ];
      return lineChart({ title: `${resource} allocated`, series, windowS, max: 1, percent: true, testid: `history-${resource}` });
    }));
    const queues = await q({ metric: "queue_length", queue: "*" });
    charts.push(lineChart({
      title: "jobs waiting", windowS, testid: "history-queues",
      series: queues.series.map((s) => ({ ...s, name: s.labels.queue })),
    }));
    fill("history", charts);
  } catch (err) {
    if (err instanceof Unauthorized) signOut("The token is no longer accepted.");
  }
}

// -- start --------------------------------------------------------------------------------

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (token) signIn(token);
});
$("logout").addEventListener("click", () => signOut());
$("window").addEventListener("change", refreshHistory);
$("jobs").addEventListener("click", (ev) => {
  const row = ev.target.closest("[data-testid=job]");
  if (row) openJob(row.dataset.job);
});
$("job-close").addEventListener("click", () => { state.job = null; $("job-panel").hidden = true; });

const code = new URLSearchParams(location.hash.slice(1)).get("code");
if (code) {
  // Out of the address bar and this entry of the history before anything else.
  history.replaceState(null, "", location.pathname + location.search);
  redeem(code);
} else if (state.token) signIn(state.token);
else showLogin();
