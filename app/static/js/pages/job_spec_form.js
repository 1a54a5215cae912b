// The job spec's fields (all but the dataset, which the page picks), built from the JobCreate schema of
// /openapi.json, and read back into a spec object. The schema gives every default, choice and bound; this
// module adds only what a schema cannot say: labels, hints, spinner steps and how fields depend on each other.

import { api, items } from "../api.js";
import { numberRule, rangeText, selectOptions } from "../form.js";
import { fieldSchema } from "../schema.js";
import { errorText, h } from "../ui.js";

const SPEC = "JobCreate";
const PHASES = ["warmup", "finetune"];
// Dashboard-only choices, named once.
const FRACTION_STEP = "0.05"; // the spinner step of the fields between 0 and 1
const MOMENTUM_OPTIMIZER = "sgd"; // the optimizer that uses momentum (the schema's description of momentum says so)
const WEIGHT_LABELS = { imagenet: "ImageNet (pretrained)", none: "none (random init)" };
const ALPHA_UNSET = "default (1.0)"; // alpha null: the backbone's full width
const AUGMENTATION = [
  ["rotation", "Rotation (degrees)"],
  ["width_shift", "Width shift (fraction)", FRACTION_STEP],
  ["height_shift", "Height shift (fraction)", FRACTION_STEP],
  ["shear", "Shear (degrees)"],
  ["zoom", "Zoom (fraction)", FRACTION_STEP],
  ["horizontal_flip", "Horizontal flip"],
];

// Per phase: early stopping and the learning-rate schedule, each a nullable object switched by a checkbox.
const EARLY_STOPPING = [
  ["patience", "Patience (epochs)"],
  ["min_delta", "Minimum improvement"],
];
const SCHEDULE = [
  ["warmup_epochs", "Ramp-up epochs"],
  ["min_lr", "Minimum learning rate"],
  ["factor", "Plateau factor", FRACTION_STEP],
  ["patience", "Plateau patience (epochs)"],
];
const CLASS_WEIGHT_CHOICES = [
  ["", "all alike"],
  ["balanced", "balanced (inverse frequency)"],
  ["custom", "by class (below)"],
];

const capitalize = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/** "cats=2, dogs=0.5" -> {cats: 2, dogs: 0.5}; null when a pair does not read. */
export function parseClassWeights(text) {
  const weights = {};
  for (const pair of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const [name, value, ...rest] = pair.split("=").map((p) => p.trim());
    const weight = Number(value);
    if (!name || rest.length || value === undefined || value === "" || !(weight > 0)) return null;
    weights[name] = weight;
  }
  return Object.keys(weights).length ? weights : null;
}

export class JobSpecForm {
  /** doc: /openapi.json; fields: the page's Fields; backbones: GET /backbones' items; signal: the page's. */
  constructor(doc, fields, backbones, signal) {
    this.doc = doc;
    this.fields = fields;
    this.backbones = backbones;
    this.layers = new LayerPicker(fields, signal);
    this.toggled = []; // [checkbox path, the fieldset it enables]
  }

  schema(path) {
    return fieldSchema(this.doc, SPEC, path);
  }

  /** GET /backbones' entry for the chosen backbone. */
  backbone() {
    const name = this.fields.input("backbone").value;
    return this.backbones.find((b) => b.name === name) || { name, min_image_size: 1, has_alpha: false, alphas: [] };
  }

  // ---------------------------------------------------------------- building

  number(path, label, options) {
    return this.fields.number(path, label, this.schema(path), options);
  }

  /** A select of the schema's enum, its default selected. */
  choice(path, label, texts = {}) {
    const schema = this.schema(path);
    return this.fields.select(
      path,
      label,
      schema.enum.map((value) => [value, texts[value] || value]),
      schema.default,
    );
  }

  /** A checkbox that turns a nullable object (augmentation, finetune) on or off; on when its default is not null. */
  toggle(path, label, params) {
    this.toggled.push([path, params]);
    return this.fields.checkbox(path, label, this.schema(path).default != null);
  }

  /** The fields, by the sections the page lays them out in. */
  build() {
    return {
      data: this.#dataFields(),
      model: this.#modelFields(),
      head: [
        this.number("head.units", "Dense units"),
        this.number("head.dropout", "Dropout", { step: FRACTION_STEP }),
      ],
      augmentation: this.#augmentationParts(),
      warmup: [h("div", { class: "grid-3" }, this.#phaseFields("warmup")), ...this.#controlParts("warmup")],
      finetune: this.#finetuneParts(),
      start: this.#startFields(),
      publish: this.#publishParts(),
    };
  }

  /** Where the weights come from (init_model_id) and how the classes weigh in the loss. */
  #startFields() {
    return [
      this.fields.text("init_model_id", "Start from model", this.schema("init_model_id"), {
        placeholder: "model id or alias",
        hint: "Empty: ImageNet's weights. Same backbone, alpha, image size and head units.",
      }),
      this.fields.select("class_weight", "Class weights", CLASS_WEIGHT_CHOICES, "", "Weights of the training loss per class."),
      this.fields.text("class_weight.custom", "Weights by class", {}, { placeholder: "cats=2, dogs=1", hint: "Classes left out weigh 1." }),
    ];
  }

  /** A phase's early stopping and schedule: each a checkbox and the fieldset it enables. */
  #controlParts(name) {
    const fieldset = (id, legend, children) =>
      h("fieldset", { class: "grid-3", id: `${name}-${id}-params`, "data-testid": `${name}-${id}-params` }, h("legend", { class: "visually-hidden" }, legend), children);
    const stopping = `${name}.early_stopping`;
    const stoppingParams = fieldset("early-stopping", "Early stopping parameters", [
      this.choice(`${stopping}.monitor`, "Monitor"),
      ...EARLY_STOPPING.map(([key, label]) => this.number(`${stopping}.${key}`, label, { step: key === "min_delta" ? "any" : undefined })),
      this.fields.checkbox(`${stopping}.restore_best`, "Keep the best epoch's weights", this.schema(`${stopping}.restore_best`).default),
    ]);
    const schedule = `${name}.schedule`;
    const scheduleParams = fieldset("schedule", "Learning-rate schedule parameters", [
      this.choice(`${schedule}.kind`, "Schedule"),
      ...SCHEDULE.map(([key, label, step]) => this.number(`${schedule}.${key}`, label, { step })),
      this.choice(`${schedule}.monitor`, "Plateau monitor"),
    ]);
    return [
      this.toggle(stopping, "Stop early when the held-out split stops improving", stoppingParams),
      stoppingParams,
      this.toggle(schedule, "Schedule the learning rate", scheduleParams),
      scheduleParams,
    ];
  }

  #publishParts() {
    const params = h(
      "fieldset",
      { class: "grid-3", id: "publish-params", "data-testid": "publish-params" },
      h("legend", { class: "visually-hidden" }, "Publish parameters"),
      this.fields.text("publish.alias", "Alias", this.schema("publish.alias"), { placeholder: "production", hint: "Lower-case letters, digits, - and _." }),
      this.number("publish.min_accuracy", "Minimum accuracy", { step: FRACTION_STEP, hint: "On the held-out split." }),
    );
    return [this.toggle("publish", "Publish the model under an alias when it reaches the minimum accuracy", params), params];
  }

  #dataFields() {
    const range = rangeText(numberRule(this.schema("validation_split")));
    return [
      this.number("validation_split", "Validation split", { step: FRACTION_STEP, hint: `${capitalize(range)}.` }),
      this.number("seed", "Seed"),
    ];
  }

  #modelFields() {
    const names = this.backbones.map((b) => b.name);
    const preferred = this.schema("backbone").default;
    return [
      this.fields.select("backbone", "Backbone", names, names.includes(preferred) ? preferred : names[0]),
      this.fields.select("alpha", "Width multiplier (alpha)", [], "", "Only for MobileNet backbones."),
      this.choice("weights", "Initial weights", WEIGHT_LABELS),
      this.number("image_size", "Image size (px)"),
      this.number("batch_size", "Batch size"),
    ];
  }

  #augmentationParts() {
    const params = h(
      "fieldset",
      { class: "grid-3", id: "augmentation-params", "data-testid": "augmentation-params" },
      h("legend", { class: "visually-hidden" }, "Augmentation parameters"),
      AUGMENTATION.map(([key, label, step]) => {
        const path = `augmentation.${key}`;
        const schema = this.schema(path);
        return schema.type === "boolean" ? this.fields.checkbox(path, label, schema.default) : this.number(path, label, { step });
      }),
    );
    return [this.toggle("augmentation", "Augment the training images", params), params];
  }

  #phaseFields(name) {
    return [
      this.number(`${name}.epochs`, "Epochs"),
      this.choice(`${name}.optimizer`, "Optimizer"),
      this.number(`${name}.learning_rate`, "Learning rate"),
      this.number(`${name}.momentum`, "Momentum", { step: FRACTION_STEP, hint: `${MOMENTUM_OPTIMIZER.toUpperCase()} only` }),
    ];
  }

  #finetuneParts() {
    const params = h(
      "fieldset",
      { class: "grid-3", id: "finetune-params", "data-testid": "finetune-params" },
      h("legend", { class: "visually-hidden" }, "Fine-tune parameters"),
      this.#phaseFields("finetune"),
      h("div", { class: "span-all" }, this.layers.field()),
      h("div", { class: "span-all stack" }, this.#controlParts("finetune")),
    );
    return [this.toggle("finetune", "Fine-tune the upper backbone layers after the warmup", params), params];
  }

  // ---------------------------------------------------------------- behaviour

  /** Wire the fields that depend on others, and load the layer list of the default backbone. */
  async start() {
    const f = this.fields;
    f.input("backbone").addEventListener("change", () => this.#onBackbone());
    // same layers, other parameter counts: keep the chosen layer
    f.input("alpha").addEventListener("change", () => this.layers.load(this.backbone(), this.alpha(), { keepChoice: true }));
    for (const name of PHASES) {
      const optimizer = f.input(`${name}.optimizer`);
      const sync = () => {
        f.input(`${name}.momentum`).disabled = optimizer.value !== MOMENTUM_OPTIMIZER;
      };
      optimizer.addEventListener("change", sync);
      sync();
    }
    const weighting = f.input("class_weight");
    const syncWeights = () => {
      f.input("class_weight.custom").disabled = weighting.value !== "custom";
    };
    weighting.addEventListener("change", syncWeights);
    syncWeights();
    for (const [path, params] of this.toggled) {
      const sync = () => {
        params.disabled = !f.input(path).checked;
      };
      f.input(path).addEventListener("change", sync);
      sync();
    }
    await this.#onBackbone();
  }

  alpha() {
    return this.backbone().has_alpha ? this.fields.input("alpha").value : "";
  }

  async #onBackbone() {
    const info = this.backbone();
    this.#updateAlpha(info);
    this.#updateImageSize(info);
    await this.layers.load(info, this.alpha());
  }

  #updateAlpha(info) {
    const select = this.fields.input("alpha");
    this.fields.wrap("alpha").hidden = !info.has_alpha;
    select.disabled = !info.has_alpha;
    const alphas = (info.alphas || []).map((a) => (Number.isInteger(a) ? a.toFixed(1) : String(a)));
    select.replaceChildren(h("option", { value: "" }, ALPHA_UNSET), ...selectOptions(alphas, select.value));
  }

  /** The smallest image size is the backbone's (GET /backbones); the largest is the schema's. */
  #updateImageSize(info) {
    const min = Number(info.min_image_size) || 1;
    this.fields.setRule("image_size", { min, minOpen: false });
    this.fields.setHint("image_size", `At least ${min} px for ${info.name}.`);
  }

  // ---------------------------------------------------------------- reading

  /** The spec the fields describe (without dataset_id) and what is wrong with them: [{path, message}]. */
  read() {
    const f = this.fields;
    const errors = [];
    const alpha = this.alpha();
    const spec = {
      backbone: this.backbone().name,
      alpha: alpha ? Number(alpha) : null,
      weights: f.input("weights").value,
      image_size: f.readNumber("image_size", errors),
      batch_size: f.readNumber("batch_size", errors),
      validation_split: f.readNumber("validation_split", errors),
      seed: f.readNumber("seed", errors),
      head: { units: f.readNumber("head.units", errors), dropout: f.readNumber("head.dropout", errors) },
      augmentation: f.input("augmentation").checked ? this.#readAugmentation(errors) : null,
      warmup: this.#readPhase("warmup", errors),
      finetune: f.input("finetune").checked ? this.#readFinetune(errors) : null,
      publish: f.input("publish").checked ? this.#readPublish(errors) : null,
      init_model_id: f.input("init_model_id").value.trim() || null,
      class_weight: this.#readClassWeight(errors),
    };
    return { spec, errors };
  }

  #readClassWeight(errors) {
    const choice = this.fields.input("class_weight").value;
    if (choice !== "custom") return choice || null;
    const weights = parseClassWeights(this.fields.input("class_weight.custom").value);
    if (!weights) errors.push({ path: "class_weight.custom", message: "Write class=weight pairs, e.g. cats=2, dogs=1 (weights > 0)." });
    return weights;
  }

  #readControl(name, errors) {
    const f = this.fields;
    const stopping = `${name}.early_stopping`;
    const schedule = `${name}.schedule`;
    const numbers = (prefix, keys) => Object.fromEntries(keys.map(([key]) => [key, f.readNumber(`${prefix}.${key}`, errors)]));
    return {
      early_stopping: f.input(stopping).checked
        ? { monitor: f.input(`${stopping}.monitor`).value, ...numbers(stopping, EARLY_STOPPING), restore_best: f.input(`${stopping}.restore_best`).checked }
        : null,
      schedule: f.input(schedule).checked
        ? { kind: f.input(`${schedule}.kind`).value, ...numbers(schedule, SCHEDULE), monitor: f.input(`${schedule}.monitor`).value }
        : null,
    };
  }

  #readPublish(errors) {
    const input = this.fields.input("publish.alias");
    if (!input.value || !input.checkValidity()) errors.push({ path: "publish.alias", message: "Give an alias: lower-case letters, digits, - and _, starting with a letter." });
    return { alias: input.value, min_accuracy: this.fields.readNumber("publish.min_accuracy", errors) };
  }

  #readAugmentation(errors) {
    const values = {};
    for (const [key] of AUGMENTATION) {
      const path = `augmentation.${key}`;
      const input = this.fields.input(path);
      values[key] = input.type === "checkbox" ? input.checked : this.fields.readNumber(path, errors);
    }
    return values;
  }

  #readPhase(name, errors) {
    const optimizer = this.fields.input(`${name}.optimizer`).value;
    const momentum = `${name}.momentum`;
    return {
      epochs: this.fields.readNumber(`${name}.epochs`, errors),
      optimizer,
      learning_rate: this.fields.readNumber(`${name}.learning_rate`, errors),
      // the field is disabled for the other optimizers, which get the schema's default
      momentum: optimizer === MOMENTUM_OPTIMIZER ? this.fields.readNumber(momentum, errors) : this.schema(momentum).default,
      ...this.#readControl(name, errors),
    };
  }

  #readFinetune(errors) {
    const unfreeze = this.layers.value();
    if (unfreeze === "") errors.push({ path: LayerPicker.PATH, message: "Choose a layer (the list is still loading)." });
    return { ...this.#readPhase("finetune", errors), unfreeze_from: unfreeze };
  }
}

/** finetune.unfreeze_from: a select of the backbone's layers (GET /backbones/{name}/layers), reloaded per backbone and alpha. */
class LayerPicker {
  static PATH = "finetune.unfreeze_from";

  constructor(fields, signal) {
    this.fields = fields;
    this.signal = signal;
    this.layers = [];
    this.request = 0; // only the latest load fills the list
  }

  field() {
    const wrap = this.fields.select(LayerPicker.PATH, "Unfreeze from layer", [], "", " ");
    this.select = this.fields.input(LayerPicker.PATH);
    this.select.addEventListener("change", () => this.#describe());
    return wrap;
  }

  /** The chosen layer: its index as a number, a name as a string, "" while none is chosen. */
  value() {
    const v = this.select.value;
    return /^-?\d+$/.test(v) ? Number(v) : v;
  }

  async load(info, alpha, { keepChoice = false } = {}) {
    const request = ++this.request;
    const previous = keepChoice ? this.select.value : null;
    this.#loading();
    const fallback = info.default_unfreeze_from ?? "";
    try {
      const query = alpha ? `?alpha=${encodeURIComponent(alpha)}` : "";
      const body = await api.get(`backbones/${encodeURIComponent(info.name)}/layers${query}`, { signal: this.signal });
      if (request !== this.request) return;
      this.#fill(items(body), fallback, previous);
    } catch (err) {
      if (err.name === "AbortError" || request !== this.request) return;
      this.#failed(err, fallback);
    }
    this.select.disabled = false; // the fieldset still disables it while fine-tuning is off
    this.select.dataset.backbone = info.name;
    this.select.dataset.loaded = `${info.name}:${alpha}`; // tests wait for the list of this backbone and alpha
    this.#describe();
  }

  #loading() {
    this.select.disabled = true;
    delete this.select.dataset.backbone;
    delete this.select.dataset.loaded;
    this.select.replaceChildren(h("option", { value: "" }, "Loading layers…"));
    this.fields.showError(LayerPicker.PATH, null);
  }

  #fill(layers, fallback, previous) {
    this.layers = layers;
    const isDefault = (l) => l.index === fallback || l.name === fallback;
    const text = (l) =>
      `${l.index}: ${l.name} (${l.type}${l.params ? `, ${Number(l.params).toLocaleString()} params` : ""})${isDefault(l) ? " — default" : ""}`;
    this.select.replaceChildren(...layers.map((l) => h("option", { value: String(l.index), selected: isDefault(l) }, text(l))));
    if (previous && layers.some((l) => String(l.index) === previous)) this.select.value = previous;
    else if (!layers.some(isDefault) && layers.length) this.select.value = String(layers[0].index);
  }

  #failed(err, fallback) {
    this.layers = [];
    this.select.replaceChildren(h("option", { value: String(fallback) }, `${fallback} (default; the layer list did not load)`));
    this.fields.showError(LayerPicker.PATH, `Could not load the layers: ${errorText(err)}`);
  }

  #describe() {
    const index = Number(this.select.value);
    if (!this.layers.length || this.select.value === "" || Number.isNaN(index)) {
      this.fields.setHint(LayerPicker.PATH, " ");
      return;
    }
    const trained = this.layers.filter((l) => l.index >= index);
    const params = trained.reduce((sum, l) => sum + (Number(l.params) || 0), 0);
    this.fields.setHint(
      LayerPicker.PATH,
      `Phase 2 trains ${trained.length} of ${this.layers.length} backbone layers (${params.toLocaleString()} parameters) plus the head.`,
    );
  }
}
