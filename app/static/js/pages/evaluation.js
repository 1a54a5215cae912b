// A model's evaluation you can act on: the precision-recall curve per class with a threshold slider,
// the held-out images behind a confusion-matrix cell, and Grad-CAM heatmaps ("where it looked").

import { api, blobUrl, items, request } from "../api.js";
import { DASH, fmtNum, fmtPct, h, notifyError } from "../ui.js";

const SAMPLE_LIMIT = 60;
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** POST the image bytes to /models/{id}/explain; the heatmap's object URL. */
export async function explainUrl(modelId, blob, name, className) {
  const body = new FormData();
  body.append("file", blob, name || "image.png");
  if (className) body.append("class", className);
  const res = await request(`models/${encodeURIComponent(modelId)}/explain`, { method: "POST", body, raw: true, headers: { Accept: "image/png" } });
  return URL.createObjectURL(await res.blob());
}

/** A "Where it looked" toggle for an image: swaps in the Grad-CAM overlay and back. */
export function heatmapToggle(ctx, modelId, img, getBlob, className) {
  const button = h("button", { type: "button", class: "btn btn-small", "data-testid": "heatmap-toggle" }, "Where it looked");
  let original = null;
  let heat = null;
  button.addEventListener("click", async () => {
    try {
      if (!heat) {
        button.disabled = true;
        heat = await explainUrl(modelId, await getBlob(), img.alt, className);
        ctx.onCleanup(() => URL.revokeObjectURL(heat));
      }
      const showing = img.dataset.heatmap === "on";
      original = original || img.src;
      img.src = showing ? original : heat;
      img.dataset.heatmap = showing ? "off" : "on";
      button.textContent = showing ? "Where it looked" : "Show the image";
    } catch (err) {
      notifyError(err, "Could not explain the image");
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

async function sampleFigure(ctx, model, row) {
  const path = row.url ? row.url.replace(/^\//, "") : null;
  const src = path ? await blobUrl(path, { signal: ctx.signal }) : "";
  if (src) ctx.onCleanup(() => URL.revokeObjectURL(src));
  const img = h("img", { src, alt: row.file || "held-out image", "data-testid": "sample-image" });
  const blob = async () => (await fetch(src)).blob();
  return h(
    "figure",
    { class: "prediction", "data-testid": "sample" },
    img,
    h(
      "figcaption",
      {},
      h("p", {}, h("code", {}, row.file || DASH)),
      h("p", {}, `true ${row.true}, predicted `, h("strong", {}, row.predicted), ` (${fmtPct(row.probability)})`),
      src ? heatmapToggle(ctx, model.id, img, blob, null) : null,
    ),
  );
}

/** The panel that lists the held-out images of a confusion-matrix cell; `show(true, predicted)` fills it. */
export function cellImages(ctx, model) {
  const title = h("h2", { id: "cell-images-title" }, "Held-out images");
  const grid = h("div", { class: "predictions", "data-testid": "cell-images", "aria-live": "polite" });
  const el = h("section", { class: "card", "aria-labelledby": "cell-images-title", hidden: true }, title, grid);
  async function show(trueClass, predicted) {
    el.hidden = false;
    title.textContent = `True ${trueClass}, predicted ${predicted}`;
    grid.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      const query = new URLSearchParams({ true: trueClass, predicted, limit: String(SAMPLE_LIMIT) });
      const body = await api.get(`models/${encodeURIComponent(model.id)}/evaluation/samples?${query}`, { signal: ctx.signal });
      const figures = await Promise.all(items(body).map((row) => sampleFigure(ctx, model, row)));
      const more = body.count > figures.length ? h("p", { class: "muted" }, `${figures.length} of ${body.count} shown.`) : null;
      grid.replaceChildren(...(figures.length ? figures : [h("p", { class: "muted" }, "No images in this cell.")]), more);
      el.scrollIntoView({ block: "nearest" });
    } catch (err) {
      if (err.name !== "AbortError") grid.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
    }
  }
  return { el, show };
}

function curveSvg(curve) {
  const chart = svg("svg", { viewBox: "0 0 200 200", class: "pr-curve", "data-testid": "pr-curve", role: "img" });
  chart.append(svg("rect", { x: 0, y: 0, width: 200, height: 200, fill: "none", stroke: "currentColor", "stroke-opacity": 0.2 }));
  const points = curve.recall.map((r, i) => `${(r * 200).toFixed(1)},${(200 - curve.precision[i] * 200).toFixed(1)}`);
  chart.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: "currentColor", "stroke-width": 2 }));
  const marker = svg("circle", { r: 5, fill: "currentColor", "data-testid": "pr-marker" });
  chart.append(marker);
  return { chart, marker };
}

/** The PR curve of one class with a threshold slider: precision, recall and abstentions at the threshold. */
export function precisionRecall(ctx, model) {
  const perClass = (model.curves && model.curves.per_class) || {};
  const names = Object.keys(perClass).filter((c) => perClass[c] && perClass[c].pr_curve);
  if (!names.length) return null;
  const select = h("select", { id: "pr-class", "data-testid": "pr-class" }, names.map((c) => h("option", { value: c }, c)));
  const slider = h("input", { type: "range", id: "pr-threshold", min: "0", max: "1", step: "0.01", value: "0.5", "data-testid": "pr-threshold" });
  const readout = h("p", { "data-testid": "pr-readout" });
  const plot = h("div", {});
  const held = {};
  async function heldOut(name) {
    if (!held[name]) {
      const query = new URLSearchParams({ predicted: name, limit: "500" });
      held[name] = items(await api.get(`models/${encodeURIComponent(model.id)}/evaluation/samples?${query}`, { signal: ctx.signal }));
    }
    return held[name];
  }
  let drawn = null;
  async function update() {
    const name = select.value;
    const curve = perClass[name].pr_curve;
    if (!drawn || drawn.name !== name) {
      drawn = { name, ...curveSvg(curve) };
      plot.replaceChildren(drawn.chart);
    }
    const t = Number(slider.value);
    let i = curve.thresholds.findIndex((x) => x >= t);
    if (i < 0) i = curve.thresholds.length - 1;
    drawn.marker.setAttribute("cx", String(curve.recall[i] * 200));
    drawn.marker.setAttribute("cy", String(200 - curve.precision[i] * 200));
    const rows = await heldOut(name);
    const abstained = rows.filter((r) => r.probability < t).length;
    readout.textContent = `At ${fmtNum(t, 2)}: precision ${fmtPct(curve.precision[i])}, recall ${fmtPct(curve.recall[i])}; ` +
      `abstains on ${abstained} of ${rows.length} held-out images predicted ${name}. AP ${fmtNum(perClass[name].ap, 3)}.`;
  }
  select.addEventListener("change", () => update().catch((err) => notifyError(err)));
  slider.addEventListener("input", () => update().catch((err) => notifyError(err)));
  update().catch((err) => notifyError(err));
  const map = model.curves.macro_map;
  const ece = model.curves.calibration && model.curves.calibration.ece;
  return h(
    "section",
    { class: "card", "aria-labelledby": "pr-title", "data-testid": "pr-panel" },
    h("h2", { id: "pr-title" }, "Precision and recall by threshold"),
    h("p", { class: "hint" }, `Macro mAP ${fmtNum(map, 3)}, expected calibration error ${fmtNum(ece, 3)} (held-out split).`),
    h("div", { class: "toolbar" }, h("label", { for: "pr-class" }, "Class"), select, h("label", { for: "pr-threshold" }, "Threshold"), slider),
    plot,
    readout,
  );
}
