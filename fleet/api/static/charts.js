// The dashboard's charts, drawn by uPlot (vendored: static/vendor/README.md; why: docs/dashboard.md).
// A chart is a canvas, so each one's container is an image to assistive technology, labelled with
// what it shows in words (the caller's `summary`); the figures themselves stay in the page's text.
//
// Pages redraw their HTML wholesale, so a container may be replaced under a chart: each call here
// gives the container its chart (updating the one it has), and charts whose container left the
// page are destroyed then, with their resize observers.

import uPlot from "./vendor/uPlot.esm.js";

const INK = "#1b1f24", MUTED = "#57606a", GRID = "#eaeef2", LINE = "#0969da", BAR = "#2da44e";
const FONT = "12px system-ui, sans-serif";
const live = new Set();  // {el, plot, observer}

function prune() {
  for (const c of live) {
    if (c.el.isConnected) continue;
    c.observer.disconnect();
    c.plot.destroy();
    live.delete(c);
  }
}

const axis = extra => ({ stroke: MUTED, font: FONT, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 }, ...extra });

// (Re)draws `opts` in `el`, as wide as el is, following its width; `key` says when the shape of
// the chart changed (then it is made anew rather than given new data).
function mount(el, key, opts, data, summary) {
  prune();
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", summary);
  const width = Math.max(200, Math.floor(el.clientWidth || el.parentElement?.clientWidth || 600));
  let c = [...live].find(x => x.el === el);
  if (c && c.key === key) { c.plot.setData(data); return c.plot; }
  if (c) { c.observer.disconnect(); c.plot.destroy(); live.delete(c); }
  const plot = new uPlot({ ...opts, width }, data, el);
  const observer = new ResizeObserver(() => {
    const w = Math.floor(el.clientWidth);
    if (w > 0 && w !== plot.width) plot.setSize({ width: w, height: plot.height });
  });
  observer.observe(el);
  live.add({ el, key, plot, observer });
  return plot;
}

// A line over time: xs in ms since the epoch, ys numbers; `range` fixes the y scale ([lo, hi]).
export function timeLine(el, { xs, ys, label, unit, range, summary, height = 220 }) {
  const opts = {
    height, ms: 1,
    legend: { show: false },
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    scales: { x: { time: true }, y: range ? { range: () => range } : {} },
    axes: [axis({}), axis({ size: 48, values: (u, vals) => vals.map(v => `${+v.toFixed(2)}`) })],
    series: [{}, { label, stroke: LINE, width: 2, points: { show: false }, value: (u, v) => v == null ? "" : `${v} ${unit}` }],
  };
  return mount(el, `line:${label}:${range}`, opts, [xs, ys], summary);
}

// Horizontal bars, one per name (top to bottom as given); `format` writes a value for the axis.
export function bars(el, { names, values, format, summary }) {
  const n = names.length;
  const short = names.map(s => s.length > 18 ? s.slice(0, 17) + "…" : s);
  const labelWidth = Math.min(160, 16 + 7 * Math.max(...short.map(s => s.length)));
  const top = Math.max(1, ...values);
  const opts = {
    height: 60 + 32 * n,
    legend: { show: false },
    cursor: { show: false },
    scales: {
      x: { time: false, ori: 1, dir: -1, range: () => [-0.5, n - 0.5] },
      y: { ori: 0, dir: 1, range: () => [0, top * 1.05] },
    },
    axes: [
      axis({ scale: "x", side: 3, size: labelWidth, stroke: INK, grid: { show: false }, ticks: { show: false },
        splits: () => names.map((_, i) => i), values: (u, splits) => splits.map(i => short[i] ?? "") }),
      axis({ scale: "y", side: 2, values: (u, vals) => vals.map(format), space: 80 }),
    ],
    series: [{}, { label: "value", fill: BAR, stroke: BAR, width: 0, points: { show: false },
      paths: uPlot.paths.bars({ size: [0.6, 28], align: 0 }) }],
  };
  return mount(el, `bars:${names.join("\u0000")}`, opts, [names.map((_, i) => i), values], summary);
}
