// #/jobs/new: the page around the job spec form: its layout, the dataset picker, client-side checks and
// submitting, with the API's 422 shown per field. The spec's fields, defaults and bounds: job_spec_form.js.

import { api, items } from "../api.js";
import { Fields, apiErrorEntries, errorSummary, hideSummary, showSummary } from "../form.js";
import { openapi } from "../schema.js";
import { h, notify, pageTitle } from "../ui.js";
import { JobSpecForm } from "./job_spec_form.js";

const SUBMIT_TEXT = "Start training";

export async function newJobPage(root, ctx, _params, query) {
  root.append(pageTitle("New training job", "new-job-title"));
  const [doc, datasetsBody, backbonesBody] = await Promise.all([
    openapi(),
    api.get("datasets", { signal: ctx.signal }),
    api.get("backbones", { signal: ctx.signal }),
  ]);
  const datasets = items(datasetsBody).sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
  if (!datasets.length) {
    root.append(
      h("p", { class: "alert", "data-testid": "no-datasets" }, "There is no dataset to train on yet. ", h("a", { href: "#/datasets" }, "Upload one first.")),
    );
    return;
  }

  const fields = new Fields("job");
  const specForm = new JobSpecForm(doc, fields, items(backbonesBody), ctx.signal);
  const form = layout(fields, specForm.build(), datasetField(fields, datasets, query.get("dataset")));
  root.append(form);
  form.querySelector("#job-reset").addEventListener("click", () => {
    const keepDataset = fields.input("dataset_id").value;
    location.hash = `#/jobs/new?dataset=${encodeURIComponent(keepDataset)}&reset=${Date.now()}`;
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitJob(form, fields, specForm, ctx);
  });
  await specForm.start();
  form.dataset.ready = "true";
}

/** The dataset select, newest first; the one named in ?dataset= is chosen when it exists. */
function datasetField(fields, datasets, preselect) {
  const describe = (d) => `${d.name || d.id} (${(d.classes || []).length} classes, ${d.num_images ?? "?"} images)`;
  return fields.select(
    "dataset_id",
    "Dataset",
    datasets.map((d) => [d.id, describe(d)]),
    preselect && datasets.some((d) => d.id === preselect) ? preselect : datasets[0].id,
  );
}

function layout(fields, parts, datasetPicker) {
  const section = (title, ...children) => h("fieldset", { class: "card" }, h("legend", {}, title), ...children);
  const grid = (children) => h("div", { class: "grid-3" }, children);
  return h(
    "form",
    { id: "job-form", "data-testid": "job-form", novalidate: true, class: "stack" },
    errorSummary(),
    section("Data", grid([datasetPicker, ...parts.data])),
    section("Model", grid(parts.model)),
    section("Head", grid(parts.head)),
    section("Augmentation", ...parts.augmentation),
    section("Phase 1: warmup (backbone frozen)", ...parts.warmup),
    section("Phase 2: finetune", ...parts.finetune),
    section("Starting weights and class weights", grid(parts.start)),
    section("Publish", ...parts.publish),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "btn btn-primary", id: "job-submit", "data-testid": "job-submit" }, SUBMIT_TEXT),
      h("button", { type: "button", class: "btn", id: "job-reset" }, "Reset to defaults"),
    ),
  );
}

/** Check the fields here first (nothing is sent while one is wrong), then POST /jobs and go to the new job. */
async function submitJob(form, fields, specForm, ctx) {
  const summary = form.querySelector('[data-testid="form-errors"]');
  const submit = form.querySelector("#job-submit");
  fields.clearErrors();
  hideSummary(summary);
  const { spec, errors } = specForm.read();
  const datasetId = fields.input("dataset_id").value;
  if (!datasetId) errors.push({ path: "dataset_id", message: "Choose a dataset." });
  if (errors.length) {
    for (const { path, message } of errors) fields.showError(path, message);
    showSummary(summary, fields, errors.map((x) => ({ ...x, label: fields.labelOf(x.path) })));
    return;
  }
  submit.disabled = true;
  submit.textContent = "Starting…";
  try {
    const job = await api.post("jobs", { dataset_id: datasetId, ...spec }, { signal: ctx.signal });
    notify(`Job ${job.id} queued.`, "success");
    location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  } catch (err) {
    if (err.name === "AbortError") return;
    showSummary(summary, fields, apiErrorEntries(fields, err));
  } finally {
    submit.disabled = false;
    submit.textContent = SUBMIT_TEXT;
  }
}
