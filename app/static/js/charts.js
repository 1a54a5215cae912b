// Chart.js (vendored UMD, window.Chart) wrappers: theme colours, the training curves, bar charts.

import { h } from "./ui.js";

function ChartJs() {
  if (!window.Chart) throw new Error("Chart.js did not load (static/vendor/chart.umd.min.js)");
  return window.Chart;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function theme() {
  return {
    fg: cssVar("--fg"),
    muted: cssVar("--muted"),
    grid: cssVar("--grid"),
    train: cssVar("--series-1"),
    val: cssVar("--series-2"),
    bar: cssVar("--accent"),
    marker: cssVar("--marker"),
  };
}

function baseOptions() {
  const t = theme();
  return {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    color: t.fg,
    plugins: {
      legend: { labels: { color: t.fg, usePointStyle: true, pointStyle: "line" } },
      tooltip: { intersect: false, mode: "index" },
    },
    scales: {
      x: { ticks: { color: t.muted }, grid: { color: t.grid } },
      y: { ticks: { color: t.muted }, grid: { color: t.grid } },
    },
  };
}

/** A canvas inside a sized box (Chart.js needs a positioned parent to be responsive). */
export function chartBox(canvasAttrs, { height = 260 } = {}) {
  const canvas = h("canvas", { role: "img", ...canvasAttrs });
  const box = h("div", { class: "chart-box", style: `height:${height}px` }, canvas);
  return { box, canvas };
}

/** Draws a dashed vertical line between two category ticks where the phase switches. */
const phaseMarker = {
  id: "phaseMarker",
  afterDatasetsDraw(chart, _args, opts) {
    const index = opts && opts.index;
    if (!index || index < 1 || index >= chart.data.labels.length) return;
    const x = chart.scales.x;
    const px = (x.getPixelForValue(index - 1) + x.getPixelForValue(index)) / 2;
    const { top, bottom } = chart.chartArea;
    const ctx = chart.ctx;
    ctx.save();
    ctx.strokeStyle = opts.color;
    ctx.fillStyle = opts.color;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([5, 4]);
    ctx.beginPath();
    ctx.moveTo(px, top);
    ctx.lineTo(px, bottom);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(opts.label || "finetune →", px + 4, top + 12);
    ctx.restore();
  },
};

/** Turn a job/model history into x labels, the four series and the phase-switch index. */
export function historySeries(history) {
  const rows = Array.isArray(history) ? history : [];
  const labels = [];
  const counters = {};
  let switchIndex = null;
  rows.forEach((row, i) => {
    const phase = row.phase || "train";
    counters[phase] = (counters[phase] || 0) + 1;
    labels.push(`${phase === "warmup" ? "W" : phase === "finetune" ? "F" : phase[0].toUpperCase()}${counters[phase]}`);
    if (switchIndex === null && i > 0 && rows[i - 1].phase !== phase) switchIndex = i;
  });
  const pick = (key) => rows.map((row) => (row[key] === undefined ? null : row[key]));
  // early stopping's marks: the row where a phase stopped, and the epoch whose weights it kept
  const stops = [];
  const kept = [];
  rows.forEach((row, i) => {
    if (row.stopped_early) stops.push(i);
    if (row.kept_epoch != null) {
      const at = rows.findIndex((r) => r.phase === row.phase && r.epoch === row.kept_epoch);
      if (at >= 0) kept.push(at);
    }
  });
  return {
    labels,
    switchIndex,
    loss: pick("loss"),
    valLoss: pick("val_loss"),
    accuracy: pick("accuracy"),
    valAccuracy: pick("val_accuracy"),
    learningRate: pick("learning_rate"),
    stops,
    kept,
  };
}

/** Chart.js per-point styles for the validation line: a star at a kept epoch, a cross where a phase stopped early. */
function markStyles(s) {
  const style = s.labels.map((_, i) => (s.kept.includes(i) ? "star" : s.stops.includes(i) ? "crossRot" : "circle"));
  const radius = style.map((name) => (name === "circle" ? 3 : 8));
  return { style, radius };
}

/**
 * Two line charts (loss, accuracy; train and validation) over both phases.
 * Returns {el, update(history)}; the charts are destroyed by ctx cleanup.
 */
export function trainingCurves(ctx, { testidPrefix = "" } = {}) {
  const Chart = ChartJs();
  const t = theme();
  const loss = chartBox({ "data-testid": `${testidPrefix}loss-chart`, "aria-label": "Loss per epoch, train and validation" });
  const acc = chartBox({
    "data-testid": `${testidPrefix}accuracy-chart`,
    "aria-label": "Accuracy per epoch, train and validation",
  });
  const line = (label, color, dashed) => ({
    label,
    data: [],
    borderColor: color,
    backgroundColor: color,
    borderDash: dashed ? [6, 3] : [],
    pointRadius: 3,
    tension: 0.2,
    spanGaps: true,
  });
  const make = (canvas, title, yOpts) =>
    new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [line("train", t.train, false), line("validation", t.val, true)] },
      options: {
        ...baseOptions(),
        plugins: {
          ...baseOptions().plugins,
          title: { display: true, text: title, color: t.fg },
          phaseMarker: { index: null, color: t.marker, label: "finetune →" },
        },
        scales: { ...baseOptions().scales, y: { ...baseOptions().scales.y, ...yOpts } },
      },
      plugins: [phaseMarker],
    });
  const rate = chartBox({ "data-testid": `${testidPrefix}learning-rate-chart`, "aria-label": "Learning rate per epoch" }, { height: 160 });
  const lossChart = make(loss.canvas, "Loss", { beginAtZero: true });
  const accChart = make(acc.canvas, "Accuracy", { min: 0, max: 1 });
  const rateChart = make(rate.canvas, "Learning rate", { beginAtZero: true });
  rateChart.data.datasets = [line("learning rate", t.train, false)];
  ctx.onCleanup(() => {
    lossChart.destroy();
    accChart.destroy();
    rateChart.destroy();
  });
  const empty = h("p", { class: "muted", "data-testid": `${testidPrefix}curves-empty` }, "No finished epochs yet.");
  const legend = h(
    "p",
    { class: "muted", "data-testid": `${testidPrefix}curves-marks`, hidden: true },
    "★ the epoch a phase kept (early stopping's best); ✕ where a phase stopped early.",
  );
  const el = h("div", { class: "curves" }, empty, h("div", { class: "grid-2" }, loss.box, acc.box), legend, rate.box);

  function update(history) {
    const s = historySeries(history);
    empty.hidden = s.labels.length > 0;
    const marks = markStyles(s);
    legend.hidden = !s.stops.length && !s.kept.length;
    for (const [chart, canvas, train, val] of [
      [lossChart, loss.canvas, s.loss, s.valLoss],
      [accChart, acc.canvas, s.accuracy, s.valAccuracy],
    ]) {
      chart.data.labels = s.labels;
      chart.data.datasets[0].data = train;
      chart.data.datasets[1].data = val;
      chart.data.datasets[1].pointStyle = marks.style;
      chart.data.datasets[1].pointRadius = marks.radius;
      chart.options.plugins.phaseMarker.index = s.switchIndex;
      chart.update("none");
      canvas.dataset.points = String(s.labels.length);
      canvas.dataset.stops = s.stops.map((i) => s.labels[i]).join(",");
      canvas.dataset.kept = s.kept.map((i) => s.labels[i]).join(",");
      if (s.switchIndex !== null) canvas.dataset.phaseSwitch = String(s.switchIndex);
      else delete canvas.dataset.phaseSwitch;
    }
    const hasRates = s.learningRate.some((v) => v !== null);
    rate.box.hidden = !hasRates;
    rateChart.data.labels = s.labels;
    rateChart.data.datasets[0].data = s.learningRate;
    rateChart.options.plugins.phaseMarker.index = s.switchIndex;
    rateChart.update("none");
    rate.canvas.dataset.points = String(hasRates ? s.labels.length : 0);
  }
  return { el, update };
}

/** A bar chart of counts per label (horizontal when there are many labels). */
export function barChart(ctx, labels, values, { testid, label = "images", ariaLabel } = {}) {
  const Chart = ChartJs();
  const t = theme();
  const horizontal = labels.length > 12;
  const { box, canvas } = chartBox(
    { "data-testid": testid, "aria-label": ariaLabel || label, "data-points": String(labels.length) },
    { height: horizontal ? Math.min(2000, 60 + labels.length * 22) : 260 },
  );
  const chart = new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: [{ label, data: values, backgroundColor: t.bar, borderRadius: 3 }] },
    options: {
      ...baseOptions(),
      indexAxis: horizontal ? "y" : "x",
      plugins: { ...baseOptions().plugins, legend: { display: false } },
    },
  });
  ctx.onCleanup(() => chart.destroy());
  return box;
}
