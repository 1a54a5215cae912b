// #/jobs/new: the job spec form, with the seed's defaults, client-side checks and the API's 422 shown per field.

import { api, items } from "../api.js";
import { clear, errorText, h, notify, pageTitle } from "../ui.js";

// The seed's recipe (DESIGN.md, "Job spec").
const DEFAULTS = {
  backbone: "vgg16",
  weights: "imagenet",
  image_size: 224,
  batch_size: 32,
  validation_split: 0.25,
  seed: 42,
  head: { units: 256, dropout: 0.5 },
  augmentation: { rotation: 30, width_shift: 0.1, height_shift: 0.1, shear: 0.2, zoom: 0.2, horizontal_flip: true },
  warmup: { epochs: 25, optimizer: "rmsprop", learning_rate: 0.001, momentum: 0.0 },
  finetune: { epochs: 100, optimizer: "sgd", learning_rate: 0.001, momentum: 0.0 },
};
const OPTIMIZERS = ["rmsprop", "sgd", "adam"];
const MAX_IMAGE_SIZE = 1024;
// Width multipliers Keras has ImageNet weights for (GET /backbones lists them as `alphas`; this is the fallback).
const ALPHAS = {
  mobilenet: ["0.25", "0.5", "0.75", "1.0"],
  mobilenet_v2: ["0.35", "0.5", "0.75", "1.0", "1.3", "1.4"],
};

const idFor = (path) => `job-${path.replace(/[._]/g, "-")}`;

export async function newJobPage(root, ctx, _params, query) {
  root.append(pageTitle("New training job", "new-job-title"));
  const loadError = h("div");
  root.append(loadError);

  const [datasetsBody, backbonesBody] = await Promise.all([
    api.get("datasets", { signal: ctx.signal }),
    api.get("backbones", { signal: ctx.signal }),
  ]);
  const datasets = items(datasetsBody).sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
  const backbones = items(backbonesBody);
  if (!datasets.length) {
    root.append(
      h("p", { class: "alert", "data-testid": "no-datasets" }, "There is no dataset to train on yet. ", h("a", { href: "#/datasets" }, "Upload one first.")),
    );
    return;
  }

  const fields = new Map(); // path -> {input, error, wrap}
  const backboneInfo = (name) => backbones.find((b) => b.name === name) || { name, min_image_size: 32, has_alpha: false };

  // ------------------------------------------------------------ field builders
  function register(path, input, wrap, error) {
    fields.set(path, { input, wrap, error });
    // an error shown for a field goes away as soon as the field is edited
    const forget = () => {
      if (!error.hidden) showFieldError(path, null);
    };
    input.addEventListener("input", forget);
    input.addEventListener("change", forget);
  }
  function fieldWrap(path, label, input, hint) {
    const id = idFor(path);
    input.id = id;
    input.name = path;
    input.dataset.path = path;
    input.setAttribute("data-testid", `field-${path}`);
    const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
    const error = h("p", { class: "field-error", id: `${id}-error`, "data-testid": `error-${path}`, hidden: true });
    input.setAttribute("aria-describedby", [hintEl && hintEl.id, error.id].filter(Boolean).join(" "));
    const wrap = h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl, error);
    register(path, input, wrap, error);
    return wrap;
  }
  function number(path, label, value, { step = "any", min, max, hint, inputmode = "decimal" } = {}) {
    const input = h("input", { type: "number", value: String(value), step, min, max, inputmode, required: true });
    return fieldWrap(path, label, input, hint);
  }
  function select(path, label, options, value, hint) {
    const input = h(
      "select",
      {},
      options.map((o) => {
        const [v, text] = Array.isArray(o) ? o : [o, o];
        return h("option", { value: v, selected: String(v) === String(value) }, text);
      }),
    );
    return fieldWrap(path, label, input, hint);
  }
  function checkbox(path, label, checked, hint) {
    const id = idFor(path);
    const input = h("input", { type: "checkbox", id, name: path, checked, "data-path": path, "data-testid": `field-${path}` });
    const error = h("p", { class: "field-error", id: `${id}-error`, "data-testid": `error-${path}`, hidden: true });
    const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
    input.setAttribute("aria-describedby", [hintEl && hintEl.id, error.id].filter(Boolean).join(" "));
    const wrap = h("div", { class: "field field-check" }, input, h("label", { for: id }, label), hintEl, error);
    register(path, input, wrap, error);
    return wrap;
  }
  const input = (path) => fields.get(path).input;

  // ------------------------------------------------------------ the form
  const preselect = query.get("dataset");
  const datasetField = select(
    "dataset_id",
    "Dataset",
    datasets.map((d) => [d.id, `${d.name || d.id} (${(d.classes || []).length} classes, ${d.num_images ?? "?"} images)`]),
    preselect && datasets.some((d) => d.id === preselect) ? preselect : datasets[0].id,
  );
  const defaultBackbone = backbones.some((b) => b.name === DEFAULTS.backbone) ? DEFAULTS.backbone : backbones[0] && backbones[0].name;
  const backboneField = select(
    "backbone",
    "Backbone",
    backbones.map((b) => b.name),
    defaultBackbone,
  );
  const alphaField = select("alpha", "Width multiplier (alpha)", [], "", "Only for MobileNet backbones.");
  const weightsField = select("weights", "Initial weights", [["imagenet", "ImageNet (pretrained)"], ["none", "none (random init)"]], DEFAULTS.weights);
  const imageSizeField = number("image_size", "Image size (px)", DEFAULTS.image_size, { step: "1", inputmode: "numeric" });

  const augToggle = checkbox("augmentation", "Augment the training images", true);
  const augSet = h(
    "fieldset",
    { class: "grid-3", id: "augmentation-params", "data-testid": "augmentation-params" },
    h("legend", { class: "visually-hidden" }, "Augmentation parameters"),
    number("augmentation.rotation", "Rotation (degrees)", DEFAULTS.augmentation.rotation, { min: "0", max: "180" }),
    number("augmentation.width_shift", "Width shift (fraction)", DEFAULTS.augmentation.width_shift, { min: "0", max: "1" }),
    number("augmentation.height_shift", "Height shift (fraction)", DEFAULTS.augmentation.height_shift, { min: "0", max: "1" }),
    number("augmentation.shear", "Shear (degrees)", DEFAULTS.augmentation.shear, { min: "0", max: "45" }),
    number("augmentation.zoom", "Zoom (fraction)", DEFAULTS.augmentation.zoom, { min: "0", max: "1" }),
    checkbox("augmentation.horizontal_flip", "Horizontal flip", DEFAULTS.augmentation.horizontal_flip),
  );

  const ftToggle = checkbox("finetune", "Fine-tune the upper backbone layers after the warmup", true);
  const unfreezeField = select("finetune.unfreeze_from", "Unfreeze from layer", [], "", " ");
  const ftSet = h(
    "fieldset",
    { class: "grid-3", id: "finetune-params", "data-testid": "finetune-params" },
    h("legend", { class: "visually-hidden" }, "Fine-tune parameters"),
    number("finetune.epochs", "Epochs", DEFAULTS.finetune.epochs, { step: "1", min: "0", inputmode: "numeric" }),
    select("finetune.optimizer", "Optimizer", OPTIMIZERS, DEFAULTS.finetune.optimizer),
    number("finetune.learning_rate", "Learning rate", DEFAULTS.finetune.learning_rate, { min: "0", max: "10" }),
    number("finetune.momentum", "Momentum", DEFAULTS.finetune.momentum, { min: "0", max: "1", step: "0.05", hint: "SGD only" }),
    h("div", { class: "span-all" }, unfreezeField),
  );

  const summary = h("div", { class: "alert alert-error", role: "alert", tabindex: "-1", "data-testid": "form-errors", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary", id: "job-submit", "data-testid": "job-submit" }, "Start training");
  const reset = h("button", { type: "button", class: "btn", id: "job-reset" }, "Reset to defaults");

  const section = (title, ...children) => h("fieldset", { class: "card" }, h("legend", {}, title), ...children);
  const form = h(
    "form",
    { id: "job-form", "data-testid": "job-form", novalidate: true, class: "stack" },
    summary,
    section(
      "Data",
      h(
        "div",
        { class: "grid-3" },
        datasetField,
        number("validation_split", "Validation split", DEFAULTS.validation_split, { min: "0", max: "1", step: "0.05", hint: "Between 0 and 1" }),
        number("seed", "Seed", DEFAULTS.seed, { step: "1", inputmode: "numeric" }),
      ),
    ),
    section(
      "Model",
      h(
        "div",
        { class: "grid-3" },
        backboneField,
        alphaField,
        weightsField,
        imageSizeField,
        number("batch_size", "Batch size", DEFAULTS.batch_size, { step: "1", min: "1", max: "1024", inputmode: "numeric" }),
      ),
    ),
    section(
      "Head",
      h(
        "div",
        { class: "grid-3" },
        number("head.units", "Dense units", DEFAULTS.head.units, { step: "1", min: "1", max: "16384", inputmode: "numeric" }),
        number("head.dropout", "Dropout", DEFAULTS.head.dropout, { min: "0", max: "1", step: "0.05" }),
      ),
    ),
    section("Augmentation", augToggle, augSet),
    section(
      "Phase 1: warmup (backbone frozen)",
      h(
        "div",
        { class: "grid-3" },
        number("warmup.epochs", "Epochs", DEFAULTS.warmup.epochs, { step: "1", min: "0", inputmode: "numeric" }),
        select("warmup.optimizer", "Optimizer", OPTIMIZERS, DEFAULTS.warmup.optimizer),
        number("warmup.learning_rate", "Learning rate", DEFAULTS.warmup.learning_rate, { min: "0", max: "10" }),
        number("warmup.momentum", "Momentum", DEFAULTS.warmup.momentum, { min: "0", max: "1", step: "0.05", hint: "SGD only" }),
      ),
    ),
    section("Phase 2: finetune", ftToggle, ftSet),
    h("div", { class: "actions" }, submit, reset),
  );
  root.append(form);

  // ------------------------------------------------------------ backbone-dependent parts
  let layers = [];
  let layerRequest = 0;
  let previousChoice = null;
  const unfreezeSelect = input("finetune.unfreeze_from");
  const unfreezeHint = fields.get("finetune.unfreeze_from").wrap.querySelector(".hint");

  function describeUnfreeze() {
    const index = Number(unfreezeSelect.value);
    if (!layers.length || Number.isNaN(index)) {
      unfreezeHint.textContent = "";
      return;
    }
    const trained = layers.filter((l) => l.index >= index);
    const params = trained.reduce((sum, l) => sum + (Number(l.params) || 0), 0);
    unfreezeHint.textContent = `Phase 2 trains ${trained.length} of ${layers.length} backbone layers (${params.toLocaleString()} parameters) plus the head.`;
  }
  unfreezeSelect.addEventListener("change", describeUnfreeze);

  async function onBackbone() {
    const info = backboneInfo(input("backbone").value);
    updateAlpha(info);
    updateImageSize(info);
    await loadLayers(info);
  }

  function updateAlpha(info) {
    const alphaSelect = input("alpha");
    const alphaWrap = fields.get("alpha").wrap;
    alphaWrap.hidden = !info.has_alpha;
    alphaSelect.disabled = !info.has_alpha;
    const previous = alphaSelect.value;
    const alphas =
      Array.isArray(info.alphas) && info.alphas.length
        ? info.alphas.map((a) => (Number.isInteger(a) ? a.toFixed(1) : String(a)))
        : ALPHAS[info.name] || [];
    alphaSelect.replaceChildren(
      h("option", { value: "" }, "default (1.0)"),
      ...alphas.map((a) => h("option", { value: a, selected: a === previous }, a)),
    );
  }

  function updateImageSize(info) {
    const min = Number(info.min_image_size) || 1;
    const size = input("image_size");
    size.min = String(min);
    fields.get("image_size").wrap.querySelector(".hint")?.remove();
    const sizeHint = h("p", { class: "hint", id: `${size.id}-hint` }, `At least ${min} px for ${info.name}.`);
    fields.get("image_size").error.before(sizeHint);
    size.setAttribute("aria-describedby", `${size.id}-hint ${size.id}-error`);
  }

  /** The layer list for unfreeze_from (its parameter counts depend on alpha). */
  async function loadLayers(info) {
    const request = ++layerRequest;
    const alpha = info.has_alpha ? input("alpha").value : "";
    unfreezeSelect.disabled = true;
    delete unfreezeSelect.dataset.backbone;
    delete unfreezeSelect.dataset.loaded;
    unfreezeSelect.replaceChildren(h("option", { value: "" }, "Loading layers…"));
    showFieldError("finetune.unfreeze_from", null);
    const fallback = info.default_unfreeze_from ?? "";
    try {
      const path = `backbones/${encodeURIComponent(info.name)}/layers${alpha ? `?alpha=${encodeURIComponent(alpha)}` : ""}`;
      const body = await api.get(path, { signal: ctx.signal });
      if (request !== layerRequest) return;
      layers = items(body);
      const isDefault = (l) => l.index === fallback || l.name === fallback;
      unfreezeSelect.replaceChildren(
        ...layers.map((l) =>
          h(
            "option",
            { value: String(l.index), selected: isDefault(l) },
            `${l.index}: ${l.name} (${l.type}${l.params ? `, ${Number(l.params).toLocaleString()} params` : ""})${isDefault(l) ? " — default" : ""}`,
          ),
        ),
      );
      if (previousChoice && layers.some((l) => String(l.index) === previousChoice)) unfreezeSelect.value = previousChoice;
      else if (!layers.some(isDefault) && layers.length) unfreezeSelect.value = String(layers[0].index);
    } catch (err) {
      if (err.name === "AbortError" || request !== layerRequest) return;
      layers = [];
      unfreezeSelect.replaceChildren(h("option", { value: String(fallback) }, `${fallback} (default; the layer list did not load)`));
      showFieldError("finetune.unfreeze_from", `Could not load the layers: ${errorText(err)}`);
    }
    unfreezeSelect.disabled = false; // the fieldset still disables it while fine-tuning is off
    unfreezeSelect.dataset.backbone = info.name;
    unfreezeSelect.dataset.loaded = `${info.name}:${alpha}`; // tests wait for the list of this backbone and alpha
    describeUnfreeze();
  }
  input("backbone").addEventListener("change", () => {
    previousChoice = null; // another backbone: start from its default layer
    onBackbone();
  });
  input("alpha").addEventListener("change", () => {
    previousChoice = unfreezeSelect.value || null; // same layers, other parameter counts: keep the choice
    loadLayers(backboneInfo(input("backbone").value));
  });
  for (const name of ["warmup", "finetune"]) {
    const optimizer = input(`${name}.optimizer`);
    const sync = () => {
      input(`${name}.momentum`).disabled = optimizer.value !== "sgd";
    };
    optimizer.addEventListener("change", sync);
    sync();
  }

  const syncToggles = () => {
    augSet.disabled = !input("augmentation").checked;
    ftSet.disabled = !input("finetune").checked;
  };
  input("augmentation").addEventListener("change", syncToggles);
  input("finetune").addEventListener("change", syncToggles);

  reset.addEventListener("click", () => {
    const keepDataset = input("dataset_id").value;
    location.hash = `#/jobs/new?dataset=${encodeURIComponent(keepDataset)}&reset=${Date.now()}`;
  });

  // ------------------------------------------------------------ validation and errors
  function showFieldError(path, message) {
    const field = fields.get(path);
    if (!field) return false;
    field.error.textContent = message || "";
    field.error.hidden = !message;
    if (message) field.input.setAttribute("aria-invalid", "true");
    else field.input.removeAttribute("aria-invalid");
    return true;
  }

  function clearErrors() {
    for (const path of fields.keys()) showFieldError(path, null);
    summary.hidden = true;
    clear(summary);
  }

  function showSummary(entries) {
    // entries: [{path|null, message}]
    clear(summary);
    summary.append(
      h("p", {}, h("strong", {}, entries.length === 1 ? "Please fix this:" : `Please fix these ${entries.length} problems:`)),
      h(
        "ul",
        {},
        entries.map(({ path, message, label }) =>
          h(
            "li",
            {},
            path && fields.has(path)
              ? h("a", { href: `#${idFor(path)}`, "data-focus": idFor(path), onclick: focusField }, label || path)
              : label
                ? h("strong", {}, label)
                : null,
            label || path ? ": " : "",
            h("span", { class: "pre-line" }, message),
          ),
        ),
      ),
    );
    summary.hidden = false;
    summary.focus();
  }

  function focusField(e) {
    e.preventDefault(); // a real href for keyboards and screen readers, but no hash navigation
    const el = document.getElementById(e.currentTarget.dataset.focus);
    if (el) el.focus();
  }

  const SECTION = { head: "Head", augmentation: "Augmentation", warmup: "Warmup", finetune: "Finetune" };
  const labelOf = (path) => {
    const field = fields.get(path);
    const label = field && field.wrap.querySelector("label");
    if (!label) return path;
    const section = path.includes(".") ? SECTION[path.split(".")[0]] : null;
    return section ? `${section}: ${label.textContent}` : label.textContent;
  };

  function read() {
    const errors = [];
    const num = (path, { int = false, check } = {}) => {
      const raw = input(path).value.trim();
      const v = Number(raw);
      let msg = null;
      if (raw === "" || Number.isNaN(v)) msg = "Enter a number.";
      else if (int && !Number.isInteger(v)) msg = "Enter a whole number.";
      else if (check) msg = check(v);
      if (msg) errors.push({ path, message: msg });
      return v;
    };
    const learningRate = (v) => (v > 0 && v <= 10 ? null : "Must be more than 0 and at most 10.");
    const between = (lo, hi, { loOpen = false, hiOpen = false } = {}) => (v) =>
      (loOpen ? v > lo : v >= lo) && (hiOpen ? v < hi : v <= hi)
        ? null
        : `Must be ${loOpen ? "more than" : "at least"} ${lo} and ${hiOpen ? "less than" : "at most"} ${hi}.`;
    const phase = (name) => {
      const optimizer = input(`${name}.optimizer`).value;
      return {
        epochs: num(`${name}.epochs`, { int: true, check: between(0, 10000) }),
        optimizer,
        learning_rate: num(`${name}.learning_rate`, { check: learningRate }),
        // Momentum is an SGD setting; the field is disabled (and 0 is sent) for the other optimizers.
        momentum: optimizer === "sgd" ? num(`${name}.momentum`, { check: between(0, 1, { hiOpen: true }) }) : 0.0,
      };
    };

    const info = backboneInfo(input("backbone").value);
    const spec = {
      dataset_id: input("dataset_id").value,
      backbone: info.name,
      alpha: info.has_alpha && input("alpha").value ? Number(input("alpha").value) : null,
      weights: input("weights").value,
      image_size: num("image_size", {
        int: true,
        check: (v) =>
          v < (Number(info.min_image_size) || 1)
            ? `Must be at least ${info.min_image_size} for ${info.name}.`
            : v > MAX_IMAGE_SIZE
              ? `Must be at most ${MAX_IMAGE_SIZE}.`
              : null,
      }),
      batch_size: num("batch_size", { int: true, check: between(1, 1024) }),
      validation_split: num("validation_split", { check: between(0, 1, { loOpen: true, hiOpen: true }) }),
      seed: num("seed", { int: true }),
      head: {
        units: num("head.units", { int: true, check: between(1, 16384) }),
        dropout: num("head.dropout", { check: between(0, 1, { hiOpen: true }) }),
      },
      augmentation: null,
      warmup: phase("warmup"),
      finetune: null,
    };
    if (!spec.dataset_id) errors.push({ path: "dataset_id", message: "Choose a dataset." });
    if (input("augmentation").checked) {
      spec.augmentation = {
        rotation: num("augmentation.rotation", { check: between(0, 180) }),
        width_shift: num("augmentation.width_shift", { check: between(0, 1, { hiOpen: true }) }),
        height_shift: num("augmentation.height_shift", { check: between(0, 1, { hiOpen: true }) }),
        shear: num("augmentation.shear", { check: between(0, 45) }),
        zoom: num("augmentation.zoom", { check: between(0, 1, { hiOpen: true }) }),
        horizontal_flip: input("augmentation.horizontal_flip").checked,
      };
    }
    if (input("finetune").checked) {
      const unfreeze = unfreezeSelect.value;
      spec.finetune = { ...phase("finetune"), unfreeze_from: /^-?\d+$/.test(unfreeze) ? Number(unfreeze) : unfreeze };
      if (unfreeze === "") errors.push({ path: "finetune.unfreeze_from", message: "Choose a layer (the list is still loading)." });
    }
    return { spec, errors };
  }

  /** Map the API's detail (FastAPI [{loc, msg, type}] or a string) onto the fields. */
  function showApiErrors(err) {
    const detail = err.detail;
    const entries = [];
    if (Array.isArray(detail)) {
      for (const item of detail) {
        const loc = Array.isArray(item && item.loc) ? item.loc.filter((p) => p !== "body").map(String) : [];
        let path = null;
        // The longest prefix of loc that names a field ("finetune.unfreeze_from.int" -> "finetune.unfreeze_from").
        for (let n = loc.length; n > 0 && !path; n -= 1) {
          const candidate = loc.slice(0, n).join(".");
          if (fields.has(candidate)) path = candidate;
        }
        const message = (item && (item.msg || item.message)) || JSON.stringify(item);
        if (path) showFieldError(path, message);
        entries.push({ path, label: path ? labelOf(path) : loc.join(".") || null, message });
      }
    } else {
      entries.push({ path: null, label: err.status ? `HTTP ${err.status}` : null, message: errorText(err) });
    }
    showSummary(entries);
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    const { spec, errors } = read();
    if (errors.length) {
      for (const { path, message } of errors) showFieldError(path, message);
      showSummary(errors.map((x) => ({ ...x, label: labelOf(x.path) })));
      return;
    }
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      const job = await api.post("jobs", spec, { signal: ctx.signal });
      notify(`Job ${job.id} queued.`, "success");
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      showApiErrors(err);
    } finally {
      submit.disabled = false;
      submit.textContent = "Start training";
    }
  });

  syncToggles();
  await onBackbone();
  form.dataset.ready = "true";
}
