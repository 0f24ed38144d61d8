/* Small SVG line charts of per-minute figures: no library, no canvas. */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

/** A chart of `series` ([{name, values: [[Date, number|null], ...]}]) over the window
    [from, to]; `unit` labels the axis. The figure's text alternative lists the latest values. */
function lineChart(title, series, from, to, unit) {
  const W = 560, H = 180, L = 48, R = 10, T = 10, B = 24;
  let top = 0;
  for (const s of series) for (const [, v] of s.values) if (v !== null && v > top) top = v;
  top = niceMax(top);
  const x = (t) => L + ((Math.min(Math.max(t, from), to) - from) / (to - from)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const latest = series.map((s) => {
    const last = s.values.filter(([, v]) => v !== null).pop();
    return `${s.name} ${last ? `${Math.round(last[1] * 10) / 10} ${unit}` : "none"}`;
  }).join(", ");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: latest ${latest}` });
  for (const frac of [0, 0.5, 1]) {
    const yy = y(top * frac);
    root.append(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy, class: "grid" }));
    const label = svg("text", { x: L - 6, y: yy + 4, "text-anchor": "end", class: "axis" });
    label.textContent = `${Math.round(top * frac * 100) / 100}`;
    root.append(label);
  }
  const minutes = Math.round((to - from) / 60000);
  for (const [t, text] of [[from, `-${minutes} min`], [to, "now"]]) {
    const label = svg("text", { x: x(t), y: H - 6, "text-anchor": t === from ? "start" : "end", class: "axis" });
    label.textContent = text;
    root.append(label);
  }
  series.forEach((s, i) => {
    const points = s.values.filter(([, v]) => v !== null).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    if (points.length === 1) {
      const [px, py] = points[0].split(",");
      root.append(svg("circle", { cx: px, cy: py, r: 3, class: `series s${i}` }));
    } else if (points.length) {
      root.append(svg("polyline", { points: points.join(" "), class: `series s${i}`, fill: "none" }));
    }
  });
  const legend = h("ul", { class: "legend" },
    series.map((s, i) => h("li", {}, h("span", { class: `swatch s${i}`, "aria-hidden": "true" }), s.name)));
  return h("figure", { class: "chart" }, h("figcaption", {}, `${title} (${unit})`), root, legend);
}
