// Hand-drawn SVG charts: stacked bars over time, and horizontal bars. Colours come from CSS
// classes (fill-<status>), so the charts follow the page's palette and need no inline style.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A round axis top divisible into 4 round steps (1, 2, 5 × 10^k each).
function niceMax(value) {
  const raw = Math.max(value, 4) / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return 4 * m * p;
  return 40 * p;
}

// series: [{label: Date, counts: {key: n}}]; keys: stacking order.
export function stackedBars(series, keys, { width = 960, height = 220, title = "" } = {}) {
  const pad = { l: 36, r: 8, t: 10, b: 22 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  const totals = series.map((s) => keys.reduce((a, k) => a + (s.counts[k] || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  const innerW = width - pad.l - pad.r;
  const innerH = height - pad.t - pad.b;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + innerH - (innerH * i) / 4;
    root.append(svg("line", { x1: pad.l, x2: width - pad.r, y1: y, y2: y, class: "gridline" }));
    root.append(svg("text", { x: pad.l - 6, y: y + 4, class: "axis", "text-anchor": "end" }, String(Math.round((max * i) / 4))));
  }
  const slot = innerW / Math.max(series.length, 1);
  const barW = Math.max(2, slot * 0.7);
  series.forEach((s, i) => {
    let y = pad.t + innerH;
    const x = pad.l + i * slot + (slot - barW) / 2;
    for (const k of keys) {
      const n = s.counts[k] || 0;
      if (!n) continue;
      const h = (innerH * n) / max;
      y -= h;
      const rect = svg("rect", { x, y, width: barW, height: h, class: `fill-${k}` });
      rect.append(svg("title", {}, `${s.label.toLocaleTimeString()}: ${n} ${k}`));
      root.append(rect);
    }
    if (i % Math.ceil(series.length / 6) === 0 || i === series.length - 1) {
      const t = s.label;
      const label = `${String(t.getHours()).padStart(2, "0")}:${String(t.getMinutes()).padStart(2, "0")}`;
      root.append(svg("text", { x: x + barW / 2, y: height - 6, class: "axis", "text-anchor": "middle" }, label));
    }
  });
  return root;
}

// rows: [{label, value, cls}] as horizontal bars with the value at the end.
export function hbars(rows, { width = 360, rowH = 22, title = "" } = {}) {
  const labelW = 150;
  const height = Math.max(rowH, rows.length * rowH) + 4;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  const max = Math.max(1, ...rows.map((r) => r.value));
  rows.forEach((r, i) => {
    const y = i * rowH + 2;
    const w = ((width - labelW - 50) * r.value) / max;
    root.append(svg("text", { x: labelW - 8, y: y + rowH / 2 + 4, class: "axis", "text-anchor": "end" }, r.label));
    root.append(svg("rect", { x: labelW, y: y + 3, width: Math.max(w, 1), height: rowH - 6, rx: 2, class: r.cls || "fill-bar" }));
    root.append(svg("text", { x: labelW + w + 6, y: y + rowH / 2 + 4, class: "value" }, String(r.value)));
  });
  return root;
}

export function progress(done, total) {
  const width = 120;
  const root = svg("svg", { viewBox: `0 0 ${width} 10`, class: "progress", role: "img", "aria-label": `${done} of ${total}` });
  root.append(svg("rect", { x: 0, y: 0, width, height: 10, rx: 5, class: "progress-track" }));
  const w = total ? (width * done) / total : 0;
  if (w > 0) root.append(svg("rect", { x: 0, y: 0, width: w, height: 10, rx: 5, class: done === total ? "progress-done" : "progress-bar" }));
  return root;
}
