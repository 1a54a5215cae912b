// #/models (list) and #/models/{id} (reports, confusion matrix, timings, curves, download, delete, try it, exports).

import { api, downloadWith, items } from "../api.js";
import { trainingCurves } from "../charts.js";
import { aliasBadges, aliasPanel, loadAliases } from "./aliases.js";
import { cellImages, heatmapToggle, precisionRecall } from "./evaluation.js";
import { exportsPanel } from "./model_exports.js";
import {
  DASH,
  confirmDialog,
  dl,
  fmtDate,
  fmtDuration,
  fmtNum,
  fmtPct,
  h,
  makeDropZone,
  notify,
  notifyError,
  pageTitle,
  setError,
  shortId,
  table,
} from "../ui.js";

function backboneText(m) {
  const spec = m.spec || {};
  const name = m.backbone || spec.backbone || DASH;
  const alpha = m.alpha ?? spec.alpha;
  return alpha ? `${name} (α ${alpha})` : name;
}

/** The list gives a summary with `accuracy`; the manifest has `metrics.accuracy`. */
function modelAccuracy(m) {
  return typeof m.accuracy === "number" ? m.accuracy : accuracyOf(m.metrics);
}

function accuracyOf(metrics) {
  if (!metrics) return null;
  if (typeof metrics.accuracy === "number") return metrics.accuracy;
  return metrics.report && typeof metrics.report.accuracy === "number" ? metrics.report.accuracy : null;
}

// ---------------------------------------------------------------- the list

export async function modelsPage(root, ctx) {
  root.append(pageTitle("Models", "models-title"));
  const [models, aliases] = await Promise.all([items(await api.get("models", { signal: ctx.signal })), loadAliases(ctx.signal)]);
  models.sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
  if (!models.length) {
    root.append(
      h("section", { class: "card" }, h("p", { class: "muted", "data-testid": "models-empty" }, "No models yet. ", h("a", { href: "#/jobs/new" }, "Start a training job."))),
    );
    return;
  }
  root.append(
    h(
      "section",
      { class: "card" },
      table(
        ["Model", "Aliases", "Backbone", "Classes", "Image size", "Accuracy", "Created", "Job"],
        models.map((m) => [
          h("a", { href: `#/models/${encodeURIComponent(m.id)}`, "data-testid": "model-link" }, h("code", {}, shortId(m.id))),
          aliasBadges(m.id, aliases),
          backboneText(m),
          Array.isArray(m.classes) ? `${m.classes.length}: ${m.classes.slice(0, 6).join(", ")}${m.classes.length > 6 ? ", …" : ""}` : DASH,
          m.image_size ? `${m.image_size} px` : DASH,
          fmtPct(modelAccuracy(m)),
          fmtDate(m.created_at),
          m.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(m.job_id)}` }, h("code", {}, shortId(m.job_id))) : DASH,
        ]),
        { caption: "Saved models, newest first", testid: "models-table", rowAttrs: (i) => ({ "data-testid": "model-row", "data-id": models[i].id }) },
      ),
    ),
  );
}

// ---------------------------------------------------------------- one model

export async function modelPage(root, ctx, [id]) {
  const title = pageTitle(`Model ${shortId(id)}`, "model-title");
  root.append(title);
  const [m, aliases] = await Promise.all([api.get(`models/${encodeURIComponent(id)}`, { signal: ctx.signal }), loadAliases(ctx.signal)]);
  const classes = Array.isArray(m.classes) ? m.classes : [];
  const timings = m.timings || {};
  const cells = cellImages(ctx, m);
  const ips = timings.images_per_s || {};

  const downloadBtn = h("button", { type: "button", class: "btn", id: "model-download", "data-testid": "model-download" }, "Download model");
  const deleteBtn = h("button", { type: "button", class: "btn btn-danger", id: "model-delete", "data-testid": "model-delete" }, "Delete model");
  downloadBtn.addEventListener("click", () => downloadWith(downloadBtn, `models/${encodeURIComponent(m.id)}/download`, `model-${m.id}.keras`));
  deleteBtn.addEventListener("click", async () => {
    const pointing = aliases.filter((a) => a.model_id === m.id).map((a) => a.name);
    const also = pointing.length ? ` The aliases ${pointing.join(", ")} that point to it are deleted too.` : "";
    const ok = await confirmDialog(`Delete model ${m.id}? Its files are removed from the store.${also}`, { confirmLabel: "Delete", danger: true });
    if (!ok) return;
    deleteBtn.disabled = true;
    try {
      await api.del(`models/${encodeURIComponent(m.id)}${pointing.length ? "?force=true" : ""}`);
      notify(`Deleted model ${m.id}.`, "success");
      location.hash = "#/models";
    } catch (err) {
      notifyError(err, "Could not delete the model");
      deleteBtn.disabled = false;
    }
  });

  root.append(
    h("p", {}, h("a", { href: "#/models" }, "← All models")),
    h(
      "section",
      { class: "card", "data-testid": "model-summary" },
      dl([
        ["Id", h("code", {}, m.id)],
        ["Aliases", aliasBadges(m.id, aliases)],
        ["Created", fmtDate(m.created_at)],
        ["Backbone", backboneText(m)],
        ["Image size", m.image_size ? `${m.image_size} px` : DASH],
        ["Classes", classes.length ? classes.join(", ") : DASH, "model-classes"],
        ["Accuracy", fmtPct(modelAccuracy(m)), "model-accuracy"],
        ["Accuracy after warmup", fmtPct(accuracyOf(m.warmup_metrics))],
        ["Dataset", m.dataset_id ? h("a", { href: `#/datasets/${encodeURIComponent(m.dataset_id)}` }, h("code", {}, m.dataset_id)) : DASH],
        ["Job", m.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(m.job_id)}` }, h("code", {}, m.job_id)) : DASH],
      ]),
      h("div", { class: "actions" }, downloadBtn, deleteBtn),
    ),
    aliasPanel(m, aliases, () => ctx.reload()),
    precisionRecall(ctx, m),
    tryIt(ctx, m),
    cells.el,
    exportsPanel(ctx, m),
    h(
      "section",
      { class: "card", "aria-labelledby": "final-eval-title" },
      h("h2", { id: "final-eval-title" }, "Final evaluation (validation split)"),
      evaluation(m.metrics, classes, "", m.predictions_file ? cells.show : null),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "warmup-eval-title" },
      h("h2", { id: "warmup-eval-title" }, "After the warmup"),
      evaluation(m.warmup_metrics, classes, "warmup-"),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "timings-title" },
      h("h2", { id: "timings-title" }, "Timings"),
      dl(
        [
          ["Loading data", fmtDuration(timings.load_s)],
          ["Warmup", fmtDuration(timings.warmup_s)],
          ["Finetune", fmtDuration(timings.finetune_s)],
          ["Images/s, warmup", fmtNum(ips.warmup, 1)],
          ["Images/s, finetune", fmtNum(ips.finetune, 1)],
        ],
        { "data-testid": "model-timings" },
      ),
    ),
  );

  const history = Array.isArray(m.history) ? m.history : [];
  if (history.length) {
    const curves = trainingCurves(ctx, { testidPrefix: "model-" });
    root.append(h("section", { class: "card", "aria-labelledby": "model-curves-title" }, h("h2", { id: "model-curves-title" }, "Training curves"), curves.el));
    curves.update(history);
  }
  root.append(
    h("section", { class: "card" }, h("details", {}, h("summary", {}, "Job spec"), h("pre", { class: "code", "data-testid": "model-spec" }, JSON.stringify(m.spec, null, 2)))),
  );
}

// ---------------------------------------------------------------- reports and the confusion matrix

function evaluation(metrics, classes, prefix, onCell = null) {
  if (!metrics || (!metrics.report && !metrics.confusion_matrix)) {
    return h("p", { class: "muted", "data-testid": `${prefix}evaluation-none` }, "No evaluation was recorded.");
  }
  return h(
    "div",
    { class: "stack" },
    h("p", {}, "Accuracy: ", h("strong", { "data-testid": `${prefix}report-accuracy` }, fmtPct(accuracyOf(metrics)))),
    metrics.report ? reportTable(metrics.report, `${prefix}report`) : null,
    metrics.confusion_matrix ? confusionMatrix(metrics.confusion_matrix, classes, `${prefix}confusion-matrix`, onCell) : null,
  );
}

function reportTable(report, testid) {
  const perClass = report.per_class || {};
  const f3 = (v) => fmtNum(v, 3, { fixed: true });
  const row = (name, r, cls) => [h("span", { class: cls }, name), f3(r.precision), f3(r.recall), f3(r.f1), fmtNum(r.support, 0)];
  const rows = Object.entries(perClass).map(([label, r]) => row(label, r || {}));
  if (report.macro_avg) rows.push(row("macro avg", report.macro_avg, "strong"));
  if (report.weighted_avg) rows.push(row("weighted avg", report.weighted_avg, "strong"));
  if (typeof report.accuracy === "number") rows.push([h("span", { class: "strong" }, "accuracy"), DASH, DASH, f3(report.accuracy), DASH]);
  return table(["Class", "Precision", "Recall", "F1", "Support"], rows, { caption: "Classification report", testid, responsive: false });
}

/** `onCell(true, predicted)`, when given, makes each cell a button that shows its images. */
function confusionMatrix(matrix, classes, testid, onCell = null) {
  const labels = classes.length === matrix.length ? classes : matrix.map((_, i) => String(i));
  const max = Math.max(1, ...matrix.flat().map(Number));
  return h(
    "div",
    { class: "table-wrap" },
    h("p", { class: "hint", id: `${testid}-caption` }, "Confusion matrix: rows are the true class, columns the predicted class."),
    h(
      "table",
      { class: "matrix", "data-testid": testid, "aria-describedby": `${testid}-caption` },
      h("caption", { class: "visually-hidden" }, "Confusion matrix"),
      h(
        "thead",
        {},
        h("tr", {}, h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "true \\ predicted"), h("span", { "aria-hidden": "true" }, "true ↓ / predicted →")), labels.map((l) => h("th", { scope: "col" }, l))),
      ),
      h(
        "tbody",
        {},
        matrix.map((row, i) => {
          const total = row.reduce((s, v) => s + Number(v), 0);
          return h(
            "tr",
            {},
            h("th", { scope: "row" }, labels[i]),
            row.map((v, j) => {
              const share = Number(v) / max;
              return h(
                "td",
                {
                  class: `cell${i === j ? " diag" : ""}${share > 0.55 ? " strong-bg" : ""}`,
                  style: `--share:${Math.round(share * 100)}%`,
                  title: `true ${labels[i]}, predicted ${labels[j]}: ${v}${total ? ` (${fmtPct(Number(v) / total)} of ${labels[i]})` : ""}`,
                  "data-testid": "matrix-cell",
                  "data-true": labels[i],
                  "data-predicted": labels[j],
                },
                onCell && Number(v)
                  ? h("button", { type: "button", class: "cell-button", "data-testid": "matrix-cell-button", onclick: () => onCell(labels[i], labels[j]) }, String(v))
                  : String(v),
              );
            }),
          );
        }),
      ),
    ),
  );
}

// ---------------------------------------------------------------- try it

function tryIt(ctx, model) {
  const classes = Array.isArray(model.classes) ? model.classes : [];
  const fileInput = h("input", { type: "file", id: "predict-files", accept: "image/*", multiple: true, "data-testid": "predict-files" });
  const topK = h("input", {
    type: "number",
    id: "predict-top-k",
    min: "1",
    max: String(Math.max(1, classes.length || 5)),
    step: "1",
    value: String(Math.min(5, classes.length || 5)),
    "data-testid": "predict-top-k",
  });
  const runBtn = h("button", { type: "submit", class: "btn btn-primary", id: "predict-run", "data-testid": "predict-run", disabled: true }, "Predict");
  const errorSlot = h("div");
  const results = h("div", { class: "predictions", "data-testid": "predictions", "aria-live": "polite" });
  let files = [];
  const urls = [];
  const revoke = () => urls.splice(0).forEach((u) => URL.revokeObjectURL(u));
  ctx.onCleanup(revoke);

  const zone = h(
    "div",
    { class: "dropzone", "data-testid": "predict-dropzone" },
    h("p", { class: "dropzone-title" }, "Drop one or more images here, or choose them"),
    h("label", { for: "predict-files" }, "Images"),
    fileInput,
  );
  const form = h(
    "form",
    { class: "stack", id: "predict-form", novalidate: true },
    zone,
    h("div", { class: "toolbar" }, h("div", { class: "field field-inline" }, h("label", { for: "predict-top-k" }, "Top k"), topK), runBtn),
    errorSlot,
    results,
  );

  const predict = async () => {
    if (!files.length) return;
    const k = Number(topK.value);
    if (!Number.isInteger(k) || k < 1) {
      setError(errorSlot, new Error("Top k must be a whole number of at least 1."), "predict-error");
      return;
    }
    setError(errorSlot, null);
    runBtn.disabled = true;
    runBtn.textContent = "Predicting…";
    const body = new FormData();
    for (const f of files) body.append("file", f, f.name);
    body.append("model_id", model.id);
    body.append("top_k", String(k));
    try {
      const answer = await api.postForm("predict", body, { signal: ctx.signal });
      revoke();
      results.replaceChildren(
        ...(answer.results || []).map((r, i) => {
          const local = files[i];
          const url = local ? URL.createObjectURL(local) : null;
          if (url) urls.push(url);
          return predictionCard(r, url, ctx, model.id, local);
        }),
      );
    } catch (err) {
      if (err.name !== "AbortError") setError(errorSlot, err, "predict-error");
    } finally {
      runBtn.disabled = !files.length;
      runBtn.textContent = "Predict";
    }
  };
  const choose = (list) => {
    files = Array.from(list || []);
    runBtn.disabled = !files.length;
    predict();
  };
  fileInput.addEventListener("change", () => choose(fileInput.files));
  makeDropZone(zone, (list) => {
    try {
      fileInput.files = list;
    } catch {
      // assignment refused: the dropped files are still used
    }
    choose(list);
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    predict();
  });

  return h("section", { class: "card", "aria-labelledby": "try-title", "data-testid": "try-it" }, h("h2", { id: "try-title" }, "Try it"), form);
}

function predictionCard(result, url, ctx, modelId, file) {
  const predictions = result.predictions || [];
  const img = url ? h("img", { src: url, alt: result.filename || "uploaded image" }) : null;
  return h(
    "figure",
    { class: "prediction", "data-testid": "prediction-result" },
    img,
    result.abstained ? h("p", { class: "badge", "data-testid": "prediction-abstained" }, "Abstained: below the threshold") : null,
    img && file ? heatmapToggle(ctx, modelId, img, async () => file, null) : null,
    h(
      "figcaption",
      {},
      h("p", { class: "prediction-file" }, h("code", {}, result.filename || DASH)),
      predictions.length
        ? h("p", {}, "Top: ", h("strong", { "data-testid": "prediction-top-label" }, predictions[0].label), ` (${fmtPct(predictions[0].probability)})`)
        : h("p", { class: "muted" }, "No predictions."),
      h(
        "ul",
        { class: "bars" },
        predictions.map((p) =>
          h(
            "li",
            { class: "bar-row", "data-testid": "prediction-bar", "data-label": p.label },
            h("span", { class: "bar-label" }, p.label),
            h(
              "span",
              { class: "bar-track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": String(p.probability), "aria-label": `${p.label} probability` },
              h("span", { class: "bar-fill", style: `width:${Math.max(0, Math.min(100, Number(p.probability) * 100)).toFixed(1)}%` }),
            ),
            h("span", { class: "bar-value" }, fmtPct(p.probability)),
          ),
        ),
      ),
    ),
  );
}
