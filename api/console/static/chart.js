// Small SVG line charts for an endpoint's last hour (no library: a polyline per series).
import { clock, h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 320;
const H = 120;
const PAD = { left: 34, right: 6, top: 8, bottom: 18 };

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function nice(max) {
  if (max <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

// series: [{label, value: point => number|null, class}]
export function lineChart(title, points, series, unit = "") {
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t : 1;
  const span = Math.max(1, t1 - t0);
  let max = 0;
  for (const p of points) for (const s of series) max = Math.max(max, s.value(p) ?? 0);
  const top = nice(max);
  const x = (t) => PAD.left + ((t - t0) / span) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const lines = series.map((s) => {
    const coords = points.filter((p) => s.value(p) != null).map((p) => `${x(p.t).toFixed(1)},${y(s.value(p)).toFixed(1)}`);
    return svg("polyline", { points: coords.join(" "), class: `line ${s.class}`, fill: "none" });
  });
  const last = points.length ? points[points.length - 1] : null;
  const legend = series.map((s) => h("span", { class: `key ${s.class}` }, `${s.label} ${last && s.value(last) != null ? +s.value(last).toFixed(2) : "—"}${unit}`));
  return h(
    "figure",
    { class: "chart", dataset: { chart: title } },
    h("figcaption", {}, h("b", {}, title), " ", legend),
    svg(
      "svg",
      { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title },
      svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0), class: "axis" }),
      svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(top), y2: y(top), class: "grid" }),
      svg("text", { x: PAD.left - 4, y: y(top) + 4, class: "tick", "text-anchor": "end" }, `${top}`),
      svg("text", { x: PAD.left - 4, y: y(0), class: "tick", "text-anchor": "end" }, "0"),
      points.length ? svg("text", { x: PAD.left, y: H - 4, class: "tick" }, clock(t0)) : null,
      points.length ? svg("text", { x: W - PAD.right, y: H - 4, class: "tick", "text-anchor": "end" }, clock(t1)) : null,
      ...lines,
    ),
    points.length < 2 ? h("small", { class: "muted" }, "Points arrive once per interval.") : null,
  );
}
