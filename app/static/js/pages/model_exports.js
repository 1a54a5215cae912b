// The exports panel of the model page (issue 13): build buttons per format, each build's status, its
// parity with the served model, the int8 flag and the download. Polls while a build is queued or running.

import { api, downloadWith } from "../api.js";
import { DASH, FINAL_STATUSES, fmtBytes, fmtDuration, fmtNum, fmtPct, h, notifyError, statusBadge, table } from "../ui.js";

const FORMATS = [
  ["savedmodel", "SavedModel (TF Serving)", "encoded images in (string), probabilities + classes out"],
  ["litert", "LiteRT float32", "pixels float32 [N, size, size, 3] 0..255"],
  ["litert_int8", "LiteRT int8", "pixels uint8 [N, size, size, 3], int8 inside, float32 out"],
  ["onnx", "ONNX", "pixels float32 [N, size, size, 3] 0..255"],
];
const POLL_MS = 1500;

export function exportsPanel(ctx, model) {
  const base = `models/${encodeURIComponent(model.id)}/exports`;
  const body = h("div", { "data-testid": "exports-table-slot" });
  let timer = null;
  const stop = () => {
    if (timer) clearTimeout(timer);
    timer = null;
  };
  ctx.onCleanup(stop);

  const refresh = async () => {
    stop();
    let records = [];
    try {
      const answer = await api.get(base, { signal: ctx.signal });
      records = answer.data || [];
    } catch (err) {
      if (err.name !== "AbortError") notifyError(err, "Could not load the exports");
      return;
    }
    const byFormat = Object.fromEntries(records.map((r) => [r.format, r]));
    body.replaceChildren(render(byFormat));
    if (records.some((r) => !FINAL_STATUSES.has(r.status))) timer = setTimeout(refresh, POLL_MS);
  };

  const build = async (format, rebuild, button) => {
    button.disabled = true;
    try {
      await api.post(base, { format, rebuild }, { signal: ctx.signal });
    } catch (err) {
      notifyError(err, `Could not start the ${format} export`);
    }
    refresh();
  };
  const cancel = async (format, button) => {
    button.disabled = true;
    try {
      await api.post(`${base}/${format}/cancel`, {}, { signal: ctx.signal });
    } catch (err) {
      notifyError(err, `Could not cancel the ${format} export`);
    }
    refresh();
  };

  const render = (byFormat) =>
    table(
      ["Format", "Status", "Agreement", "Max |Δp|", "Accuracy (served)", "Latency (served)", "Size", "Built in", ""],
      FORMATS.map(([format, label, input]) => {
        const r = byFormat[format];
        const p = (r && r.parity) || {};
        const measured = p.available === true;
        const actions = h("div", { class: "actions" });
        const active = r && !FINAL_STATUSES.has(r.status);
        if (active) {
          const b = h("button", { type: "button", class: "btn", "data-testid": `export-cancel-${format}` }, "Cancel");
          b.addEventListener("click", () => cancel(format, b));
          actions.append(b);
        } else {
          const rebuild = r && r.status === "succeeded";
          const b = h("button", { type: "button", class: rebuild ? "btn" : "btn btn-primary", "data-testid": `export-build-${format}` }, rebuild ? "Rebuild" : "Build");
          b.addEventListener("click", () => build(format, Boolean(rebuild), b));
          actions.append(b);
        }
        if (r && r.status === "succeeded") {
          const d = h("button", { type: "button", class: "btn", "data-testid": `export-download-${format}` }, "Download");
          d.addEventListener("click", () => downloadWith(d, `${base}/${format}/download`, `${model.id}-${r.file || format}`));
          actions.append(d);
        }
        const notes = [];
        if (r && r.flagged) notes.push(h("p", { class: "badge badge-failed", "data-testid": `export-flag-${format}`, title: r.flag_reason || "" }, `flagged: ${r.flag_reason || "below its bar"}`));
        if (r && r.error) notes.push(h("p", { class: "field-error" }, `${r.error.type}: ${r.error.message}`));
        if (r && p.available === false) notes.push(h("p", { class: "muted" }, `parity not measured: ${p.reason || "unknown"}`));
        return [
          h("span", {}, h("strong", {}, label), h("br"), h("small", { class: "muted" }, input)),
          h("span", {}, r ? statusBadge(r.status) : h("span", { class: "muted" }, "not built"), ...notes),
          measured ? h("span", { "data-testid": `export-agreement-${format}` }, fmtPct(p.agreement, 2)) : DASH,
          measured ? fmtNum(p.max_abs_diff, 4) : DASH,
          measured ? `${fmtPct(p.accuracy)} (${fmtPct(p.keras_accuracy)})` : DASH,
          measured ? `${fmtNum(p.latency_ms, 2)} ms (${fmtNum(p.keras_latency_ms, 2)} ms)` : DASH,
          r && r.size_bytes ? fmtBytes(r.size_bytes) : DASH,
          r && r.build_seconds ? fmtDuration(r.build_seconds) : DASH,
          actions,
        ];
      }),
      { caption: "Exports, each checked against the served model on the model's held-out images", testid: "exports-table", rowAttrs: (i) => ({ "data-testid": "export-row", "data-format": FORMATS[i][0] }) },
    );

  refresh();
  return h(
    "section",
    { class: "card", "aria-labelledby": "exports-title", "data-testid": "model-exports" },
    h("h2", { id: "exports-title" }, "Exports"),
    h("p", { class: "hint" }, "Built by a worker. Agreement is the share of held-out images on which the export's top-1 label is the served model's (float exports should reach 99.9%, int8 is flagged below 98%)."),
    body,
  );
}
