// #/datasets (upload + list) and #/datasets/{id} (classes, counts chart, splits, versions, thumbnails,
// skipped files, and a form that makes a new version by moving or removing files).

import { api, blobUrl, items, upload } from "../api.js";
import { barChart } from "../charts.js";
import {
  confirmDialog,
  dl,
  encodePath,
  errorBox,
  fmtBytes,
  fmtDate,
  h,
  makeDropZone,
  notify,
  notifyError,
  pageTitle,
  setError,
  table,
} from "../ui.js";

const ARCHIVE_RE = /\.(zip|tar|tar\.gz|tgz)$/i;
const SAMPLES_PER_CLASS = 4;
const THUMB_CONCURRENCY = 6;

export async function datasetsPage(root, ctx) {
  const listSlot = h("div", { "data-testid": "dataset-list" }, h("p", { class: "muted" }, "Loading…"));
  root.append(
    pageTitle("Datasets", "datasets-title"),
    uploadCard(ctx),
    h("section", { class: "card", "aria-labelledby": "datasets-list-title" }, h("h2", { id: "datasets-list-title" }, "Uploaded datasets"), listSlot),
  );
  await loadList(ctx, listSlot);
}

function uploadCard(ctx) {
  const fileInput = h("input", {
    type: "file",
    id: "dataset-file",
    name: "file",
    accept: ".zip,.tar,.tar.gz,.tgz,application/zip,application/x-tar,application/gzip",
    "aria-describedby": "dataset-file-hint",
    "data-testid": "dataset-file",
  });
  const nameInput = h("input", { type: "text", id: "dataset-name", name: "name", autocomplete: "off", "data-testid": "dataset-name" });
  const chosen = h("p", { id: "dataset-chosen", "data-testid": "dataset-chosen", "aria-live": "polite" });
  const uploadBtn = h("button", { type: "submit", class: "btn btn-primary", id: "dataset-upload", "data-testid": "dataset-upload", disabled: true }, "Upload");
  const cancelBtn = h("button", { type: "button", class: "btn", id: "dataset-upload-cancel", hidden: true }, "Cancel upload");
  const bar = h("progress", { id: "upload-progress", max: "100", value: "0", "aria-label": "Upload progress", "data-testid": "upload-progress" });
  const barText = h("span", { class: "progress-text", id: "upload-progress-text", "data-testid": "upload-progress-text", "aria-live": "polite" });
  const progress = h("div", { class: "progress", hidden: true }, bar, barText);
  const errorSlot = h("div", { "data-testid": "upload-error-slot" });
  let file = null;
  let current = null;

  const choose = (files) => {
    setError(errorSlot, null);
    file = files && files.length ? files[0] : null;
    if (file && !ARCHIVE_RE.test(file.name)) {
      setError(errorSlot, new Error(`"${file.name}" is not a .zip, .tar or .tar.gz archive.`), "upload-error");
      file = null;
    }
    chosen.textContent = file ? `Ready to upload: ${file.name} (${fmtBytes(file.size)})` : "";
    uploadBtn.disabled = !file;
  };
  fileInput.addEventListener("change", () => choose(fileInput.files));

  const zone = h(
    "div",
    { class: "dropzone", id: "dataset-dropzone", "data-testid": "dataset-dropzone" },
    h("p", { class: "dropzone-title" }, "Drop a dataset archive here, or choose one"),
    h("label", { for: "dataset-file" }, "Archive (.zip, .tar, .tar.gz)"),
    fileInput,
    h("p", { class: "hint", id: "dataset-file-hint" }, "One folder per class: ", h("code", {}, "cats/img1.jpg"), ", ", h("code", {}, "dogs/img2.jpg"), ", …"),
    chosen,
  );
  makeDropZone(zone, (files) => {
    try {
      fileInput.files = files; // keeps the input and the drop in agreement
    } catch {
      // Some browsers refuse to assign FileLists; the chosen file is still used.
    }
    choose(files);
  });

  const form = h(
    "form",
    { class: "stack", id: "dataset-upload-form", "data-testid": "dataset-upload-form", novalidate: true },
    zone,
    h("div", { class: "field" }, h("label", { for: "dataset-name" }, "Name (optional)"), nameInput),
    h("div", { class: "actions" }, uploadBtn, cancelBtn),
    progress,
    errorSlot,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file || current) return;
    setError(errorSlot, null);
    const data = new FormData();
    data.append("file", file, file.name);
    if (nameInput.value.trim()) data.append("name", nameInput.value.trim());
    progress.hidden = false;
    bar.value = 0;
    barText.textContent = "0%";
    uploadBtn.disabled = true;
    cancelBtn.hidden = false;
    current = upload("datasets", data, {
      onProgress: (fraction) => {
        if (fraction === null) {
          bar.removeAttribute("value");
          barText.textContent = "Uploading…";
          return;
        }
        bar.value = Math.round(fraction * 100);
        barText.textContent = fraction >= 1 ? "100% — checking the images on the server…" : `${Math.round(fraction * 100)}%`;
      },
    });
    try {
      const dataset = await current.promise;
      bar.value = 100;
      barText.textContent = "Done";
      const skipped = (dataset.skipped || []).length;
      notify(
        `Uploaded "${dataset.name || dataset.id}": ${dataset.num_images} images in ${(dataset.classes || []).length} classes` +
          (skipped ? `, ${skipped} files skipped` : ""),
        "success",
      );
      // An upload goes on when the user moves to another page; only open the dataset if they stayed.
      if (ctx.active) location.hash = `#/datasets/${encodeURIComponent(dataset.id)}`;
    } catch (err) {
      if (err.name === "AbortError") {
        barText.textContent = "Cancelled";
      } else if (!ctx.active) {
        notifyError(err, "The dataset upload failed");
      } else {
        setError(errorSlot, err, "upload-error");
        progress.hidden = true;
      }
    } finally {
      current = null;
      cancelBtn.hidden = true;
      uploadBtn.disabled = !file;
    }
  });
  cancelBtn.addEventListener("click", () => current && current.abort());

  return h(
    "section",
    { class: "card", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a dataset"),
    form,
  );
}

async function loadList(ctx, slot) {
  let datasets;
  try {
    datasets = items(await api.get("datasets", { signal: ctx.signal }));
  } catch (err) {
    if (err.name === "AbortError") return;
    setError(slot, err, "dataset-list-error");
    return;
  }
  slot.replaceChildren();
  if (!datasets.length) {
    slot.append(h("p", { class: "muted", "data-testid": "datasets-empty" }, "No datasets yet. Upload an archive above."));
    return;
  }
  datasets.sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
  slot.append(
    table(
      ["Name", "Classes", "Images", "Skipped", "Created", "Actions"],
      datasets.map((d) => [
        h("a", { href: `#/datasets/${encodeURIComponent(d.id)}`, "data-testid": "dataset-link" }, d.name || d.id),
        String((d.classes || []).length),
        String(d.num_images ?? "—"),
        String((d.skipped || []).length),
        fmtDate(d.created_at),
        h(
          "div",
          { class: "actions" },
          h("a", { class: "btn btn-small", href: `#/jobs/new?dataset=${encodeURIComponent(d.id)}` }, "Train"),
          deleteButton(d, () => loadList(ctx, slot)),
        ),
      ]),
      { caption: "Newest first", testid: "datasets-table", rowAttrs: (i) => ({ "data-testid": "dataset-row", "data-id": datasets[i].id }) },
    ),
  );
}

function deleteButton(dataset, after) {
  return h(
    "button",
    {
      type: "button",
      class: "btn btn-small btn-danger",
      "aria-label": `Delete dataset ${dataset.name || dataset.id}`,
      onclick: async (e) => {
        const ok = await confirmDialog(`Delete dataset "${dataset.name || dataset.id}" and its files?`, {
          confirmLabel: "Delete",
          danger: true,
        });
        if (!ok) return;
        e.target.disabled = true;
        try {
          await api.del(`datasets/${encodeURIComponent(dataset.id)}`);
          notify(`Deleted dataset "${dataset.name || dataset.id}".`, "success");
          after();
        } catch (err) {
          notifyError(err, "Could not delete the dataset");
          e.target.disabled = false;
        }
      },
    },
    "Delete",
  );
}

// ---------------------------------------------------------------- one dataset

export async function datasetPage(root, ctx, [id]) {
  const title = pageTitle("Dataset", "dataset-title");
  root.append(title);
  const dataset = await api.get(`datasets/${encodeURIComponent(id)}`, { signal: ctx.signal });
  title.textContent = dataset.name || dataset.id;
  document.title = `${title.textContent} · Fine-tune`;

  const classes = dataset.classes || [];
  const counts = dataset.counts || {};
  const skipped = dataset.skipped || [];

  root.append(
    h("p", {}, h("a", { href: "#/datasets" }, "← All datasets")),
    h(
      "section",
      { class: "card", "data-testid": "dataset-summary" },
      dl([
        ["Id", h("code", {}, dataset.id), "dataset-id"],
        ["Created", fmtDate(dataset.created_at)],
        ["Images", String(dataset.num_images ?? "—"), "dataset-num-images"],
        ["Classes", String(classes.length)],
        ["Skipped files", String(skipped.length)],
        ...versionRows(dataset),
      ]),
      h(
        "div",
        { class: "actions" },
        h(
          "a",
          { class: "btn btn-primary", href: `#/jobs/new?dataset=${encodeURIComponent(dataset.id)}`, "data-testid": "train-link" },
          "Train a model on this dataset",
        ),
        deleteButton(dataset, () => {
          location.hash = "#/datasets";
        }),
      ),
    ),
  );

  const countsSection = h(
    "section",
    { class: "card", "aria-labelledby": "counts-title" },
    h("h2", { id: "counts-title" }, "Images per class"),
  );
  root.append(countsSection);
  if (classes.length) {
    countsSection.append(
      barChart(
        ctx,
        classes,
        classes.map((c) => counts[c] ?? 0),
        { testid: "counts-chart", ariaLabel: `Images per class: ${classes.map((c) => `${c} ${counts[c] ?? 0}`).join(", ")}` },
      ),
      h(
        "ul",
        { class: "chips", "data-testid": "dataset-classes" },
        classes.map((c) => h("li", { class: "chip", "data-testid": "class-chip", "data-class": c }, `${c}: ${counts[c] ?? 0}`)),
      ),
    );
  } else {
    countsSection.append(h("p", { class: "muted" }, "This dataset has no classes."));
  }

  if (dataset.splits) root.append(splitsSection(dataset));
  root.append(newVersionCard(dataset));

  const samplesSlot = h("div", { "data-testid": "samples" }, h("p", { class: "muted" }, "Loading samples…"));
  root.append(
    h("section", { class: "card", "aria-labelledby": "samples-title" }, h("h2", { id: "samples-title" }, "Samples"), samplesSlot),
    h(
      "section",
      { class: "card", "aria-labelledby": "skipped-title" },
      h("h2", { id: "skipped-title" }, `Skipped files (${skipped.length})`),
      skipped.length
        ? table(
            ["File", "Reason"],
            skipped.map((s) => [h("code", {}, s.path), s.reason]),
            { caption: "Files left out at upload, with the reason", testid: "skipped-table" },
          )
        : h("p", { class: "muted", "data-testid": "skipped-none" }, "No files were skipped."),
    ),
  );
  loadSamples(ctx, dataset, samplesSlot); // not awaited: the page is usable while thumbnails arrive
}

function datasetLink(id, testid) {
  return h("a", { href: `#/datasets/${encodeURIComponent(id)}`, "data-testid": testid }, h("code", {}, id));
}

/** Summary rows of a version (its parent and what it changed) and of a parent (its versions). */
function versionRows(dataset) {
  const rows = [];
  if (dataset.parent_id) {
    rows.push(["Version of", datasetLink(dataset.parent_id, "dataset-parent"), "dataset-parent-row"]);
    const c = dataset.change || {};
    rows.push(["Change", `${c.added ?? 0} added, ${c.moved ?? 0} moved, ${c.removed ?? 0} removed`, "dataset-change"]);
  }
  const children = dataset.children || [];
  rows.push([
    "Versions",
    children.length ? h("span", {}, ...children.flatMap((id, i) => [i ? ", " : "", datasetLink(id, "dataset-child")])) : "none",
    "dataset-children",
  ]);
  return rows;
}

/** Images per split and class, for a dataset uploaded as train/ validation/ (test/) folders. */
function splitsSection(dataset) {
  const names = Object.keys(dataset.splits);
  const classes = dataset.classes || [];
  return h(
    "section",
    { class: "card", "aria-labelledby": "splits-title" },
    h("h2", { id: "splits-title" }, "Splits"),
    h("p", { class: "muted" }, "Given by the archive's folders; the test split, when there is one, gives the models' final metrics."),
    table(
      ["Class", ...names],
      [...classes.map((c) => [c, ...names.map((s) => String(dataset.splits[s][c] ?? 0))]), [h("strong", {}, "All"), ...names.map((s) => String(Object.values(dataset.splits[s]).reduce((a, b) => a + b, 0)))]],
      { caption: "Images per split and class", testid: "splits-table" },
    ),
  );
}

const VERSION_EXAMPLE = '{\n  "move": [{"path": "cats/1.jpg", "to": "dogs"}],\n  "remove": ["dogs/blurry.jpg"]\n}';

/** A new version of the dataset from a JSON list of moves and removals; the dataset itself stays as it is. */
function newVersionCard(dataset) {
  const text = h("textarea", {
    id: "version-edits",
    rows: "6",
    spellcheck: "false",
    placeholder: VERSION_EXAMPLE,
    "aria-describedby": "version-edits-hint",
    "data-testid": "version-edits",
  });
  const errorSlot = h("div", { "data-testid": "version-error-slot" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", "data-testid": "version-create" }, "Create version");
  const form = h(
    "form",
    { class: "stack", "data-testid": "version-form" },
    h("label", { for: "version-edits" }, "Files to move (to another class) or remove, as JSON"),
    text,
    h("p", { class: "hint", id: "version-edits-hint" }, "Paths as in the dataset (", h("code", {}, "<class>/<file>"), " or ", h("code", {}, "<split>/<class>/<file>"), "). This dataset is not changed: a new one is made."),
    errorSlot,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setError(errorSlot, null);
    let edits;
    try {
      edits = JSON.parse(text.value);
    } catch (err) {
      setError(errorSlot, new Error(`Not valid JSON: ${err.message}`), "version-error");
      return;
    }
    submit.disabled = true;
    try {
      const version = await api.post(`datasets/${encodeURIComponent(dataset.id)}/versions`, edits);
      notify(`Created version ${version.id}.`, "success");
      location.hash = `#/datasets/${encodeURIComponent(version.id)}`;
    } catch (err) {
      setError(errorSlot, err, "version-error");
    } finally {
      submit.disabled = false;
    }
  });
  return h("section", { class: "card", "aria-labelledby": "version-title" }, h("h2", { id: "version-title" }, "New version"), form);
}

async function loadSamples(ctx, dataset, slot) {
  let groups;
  try {
    groups = items(
      await api.get(`datasets/${encodeURIComponent(dataset.id)}/samples?per_class=${SAMPLES_PER_CLASS}`, { signal: ctx.signal }),
    );
  } catch (err) {
    if (err.name !== "AbortError") setError(slot, err, "samples-error");
    return;
  }
  slot.replaceChildren();
  if (!groups.length) {
    slot.append(h("p", { class: "muted" }, "No sample images."));
    return;
  }
  const jobs = [];
  for (const group of groups) {
    const grid = h("ul", { class: "thumbs", "data-testid": "thumbs", "data-class": group.label });
    slot.append(h("h3", {}, group.label), grid);
    for (const file of group.files || []) {
      const img = h("img", { alt: `${group.label}: ${file.split("/").pop()}`, loading: "lazy", "data-testid": "thumb-img" });
      const item = h("li", { class: "thumb", "data-testid": "thumb", title: file }, img);
      grid.append(item);
      jobs.push({ file, img, item });
    }
  }
  const urls = [];
  ctx.onCleanup(() => urls.forEach((u) => URL.revokeObjectURL(u)));
  const next = async () => {
    while (jobs.length && ctx.active) {
      const { file, img, item } = jobs.shift();
      try {
        const url = await blobUrl(`datasets/${encodeURIComponent(dataset.id)}/files/${encodePath(file)}`, { signal: ctx.signal });
        urls.push(url);
        img.src = url;
      } catch (err) {
        if (err.name === "AbortError") return;
        item.replaceChildren(errorBox(err, "thumb-error"));
      }
    }
  };
  await Promise.all(Array.from({ length: THUMB_CONCURRENCY }, next));
}
