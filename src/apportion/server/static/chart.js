// A small SVG line chart for history series: no dependencies.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fd6", "#d2433f", "#2e9d5b", "#d99a1e", "#8a4fc7", "#1a9fb0", "#c2497f", "#6b7482"];
const W = 600;
const H = 150;
const PAD = { left: 38, right: 8, top: 8, bottom: 18 };

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

const ARROW = { increasing: "↗", decreasing: "↘", stable: "→" };

function fmt(value, percent) {
  if (value === null || value === undefined) return "–";
  return percent ? `${Math.round(value * 100)}%` : `${Math.round(value * 10) / 10}`;
}

function clock(t, windowS) {
  const d = new Date(t * 1000);
  return windowS > 172800 ? d.toLocaleDateString([], { month: "short", day: "numeric" })
    : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/**
 * series: [{name, points: [[t, v], ...], trend: {direction, slope_per_hour}, last, strong}]
 */
export function lineChart({ title, series, windowS, max, percent = false, testid }) {
  const now = Date.now() / 1000;
  const t0 = now - windowS;
  let top = max || 0;
  if (!max) for (const sr of series) for (const [, v] of sr.points) top = Math.max(top, v);
  top = top || 1;
  const x = (t) => PAD.left + ((t - t0) / windowS) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const frac of [0, 0.5, 1]) {
    const yy = y(top * frac);
    svg.append(s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: yy, y2: yy }));
    svg.append(s("text", { x: 2, y: yy + 3 }, fmt(top * frac, percent)));
  }
  svg.append(s("text", { x: PAD.left, y: H - 4 }, clock(t0, windowS)));
  svg.append(s("text", { x: W - PAD.right, y: H - 4, "text-anchor": "end" }, clock(now, windowS)));
  series.forEach((sr, i) => {
    if (!sr.points.length) return;
    const color = COLORS[i % COLORS.length];
    const pts = sr.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    if (sr.points.length === 1) {
      const [t, v] = sr.points[0];
      svg.append(s("circle", { cx: x(t), cy: y(v), r: 3, fill: color }));
    } else {
      svg.append(s("polyline", { points: pts, stroke: color, "stroke-width": sr.strong ? 3 : 1.5 }));
    }
  });

  const keys = el("div", { class: "keys" });
  series.forEach((sr, i) => {
    const trend = sr.trend || { direction: "stable", slope_per_hour: 0 };
    const slope = percent ? `${(trend.slope_per_hour * 100).toFixed(1)} pts/h` : `${trend.slope_per_hour.toFixed(2)}/h`;
    const key = el("span", { "data-testid": "trend", "data-direction": trend.direction,
      title: `fitted slope ${slope}` });
    key.append(el("i", { class: "sw", style: `background:${COLORS[i % COLORS.length]}` }),
      `${sr.name} ${fmt(sr.last, percent)} `,
      el("span", { class: `trend-${trend.direction}` }, `${ARROW[trend.direction] || ""} ${trend.direction}`));
    keys.append(key);
  });
  const empty = series.every((sr) => !sr.points.length);
  const head = el("h3", {}, el("span", {}, title),
    el("span", { class: "muted" }, empty ? "collecting…" : `${series.length} series`));
  const box = el("div", { class: "chart", "data-testid": testid || "chart" }, head, svg, keys);
  return box;
}
