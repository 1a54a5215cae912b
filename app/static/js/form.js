// Generic form fields: number inputs whose bounds come from a JSON schema, selects and checkboxes, each with
// its label, hint and error line; plus the error summary and the mapping of the API's 422 detail onto fields.

import { clear, errorText, h } from "./ui.js";

/** The rule a number field checks, from its schema: {int, min, max, minOpen, maxOpen} (a missing bound is undefined). */
export function numberRule(schema) {
  return {
    int: schema.type === "integer",
    min: schema.exclusiveMinimum ?? schema.minimum,
    minOpen: schema.exclusiveMinimum !== undefined,
    max: schema.exclusiveMaximum ?? schema.maximum,
    maxOpen: schema.exclusiveMaximum !== undefined,
  };
}

/** "more than 0 and less than 1", "at least 1 and at most 1024", "" when unbounded. */
export function rangeText({ min, max, minOpen, maxOpen }) {
  const parts = [];
  if (min !== undefined) parts.push(`${minOpen ? "more than" : "at least"} ${min}`);
  if (max !== undefined) parts.push(`${maxOpen ? "less than" : "at most"} ${max}`);
  return parts.join(" and ");
}

/** What is wrong with a number field's text under its rule, or null. */
export function numberError(raw, rule) {
  const v = Number(raw);
  if (raw === "" || !Number.isFinite(v)) return "Enter a number.";
  if (rule.int && !Number.isInteger(v)) return "Enter a whole number.";
  const low = rule.min === undefined || (rule.minOpen ? v > rule.min : v >= rule.min);
  const high = rule.max === undefined || (rule.maxOpen ? v < rule.max : v <= rule.max);
  return low && high ? null : `Must be ${rangeText(rule)}.`;
}

const capitalized = (s) => s.charAt(0).toUpperCase() + s.slice(1).replace(/_/g, " ");

/**
 * The fields of one form, by dotted path ("warmup.epochs"). Each gets the id `${prefix}-${path}` (dots and
 * underscores as dashes), name and data-path = path, data-testid `field-${path}`, and an error line
 * data-testid `error-${path}` that is cleared as soon as the field is edited.
 */
export class Fields {
  constructor(prefix) {
    this.prefix = prefix;
    this.entries = new Map(); // path -> {input, wrap, error, rule}
  }

  idFor(path) {
    return `${this.prefix}-${path.replace(/[._]/g, "-")}`;
  }

  has(path) {
    return this.entries.has(path);
  }

  input(path) {
    return this.entries.get(path).input;
  }

  wrap(path) {
    return this.entries.get(path).wrap;
  }

  /** A number input for a schema property: its default as the value, its bounds as min/max and as the check. */
  number(path, label, schema, { step, hint } = {}) {
    const rule = numberRule(schema);
    const input = h("input", {
      type: "number",
      value: schema.default === undefined || schema.default === null ? "" : String(schema.default),
      step: step || (rule.int ? "1" : "any"),
      min: rule.min,
      max: rule.max,
      inputmode: rule.int ? "numeric" : "decimal",
      required: true,
    });
    return this.#field(path, label, input, hint, { rule });
  }

  /** A text input for a schema string property: its pattern and length bounds as the browser's check. */
  text(path, label, schema, { placeholder, hint } = {}) {
    const input = h("input", { type: "text", pattern: schema.pattern, maxlength: schema.maxLength, placeholder, autocomplete: "off" });
    return this.#field(path, label, input, hint);
  }

  /** A select; options are values or [value, text] pairs. */
  select(path, label, options, value, hint) {
    const input = h("select", {}, selectOptions(options, value));
    return this.#field(path, label, input, hint);
  }

  checkbox(path, label, checked, hint) {
    const input = h("input", { type: "checkbox", checked });
    return this.#field(path, label, input, hint, { check: true });
  }

  /** Set (or, with an empty text, remove) a field's hint. */
  setHint(path, text) {
    const { input, wrap, error } = this.entries.get(path);
    wrap.querySelector(".hint")?.remove();
    const hint = text ? h("p", { class: "hint", id: `${input.id}-hint` }, text) : null;
    if (hint) error.before(hint);
    input.setAttribute("aria-describedby", [hint && hint.id, error.id].filter(Boolean).join(" "));
    return hint;
  }

  /** Change part of a number field's rule (e.g. a minimum that depends on another field). */
  setRule(path, changes) {
    const entry = this.entries.get(path);
    Object.assign(entry.rule, changes);
    if ("min" in changes) entry.input.min = changes.min === undefined ? "" : String(changes.min);
    if ("max" in changes) entry.input.max = changes.max === undefined ? "" : String(changes.max);
  }

  /** A number field's value; what is wrong with it is pushed onto `errors` as {path, message}. */
  readNumber(path, errors) {
    const { input, rule } = this.entries.get(path);
    const raw = input.value.trim();
    const message = numberError(raw, rule);
    if (message) errors.push({ path, message });
    return Number(raw);
  }

  showError(path, message) {
    const entry = this.entries.get(path);
    if (!entry) return false;
    entry.error.textContent = message || "";
    entry.error.hidden = !message;
    if (message) entry.input.setAttribute("aria-invalid", "true");
    else entry.input.removeAttribute("aria-invalid");
    return true;
  }

  clearErrors() {
    for (const path of this.entries.keys()) this.showError(path, null);
  }

  /** The label a message names a field by: "Warmup: Epochs" for "warmup.epochs". */
  labelOf(path) {
    const label = this.entries.get(path)?.wrap.querySelector("label");
    if (!label) return path;
    return path.includes(".") ? `${capitalized(path.split(".")[0])}: ${label.textContent}` : label.textContent;
  }

  /** The field an API error location names: the longest prefix of it that is a field ("finetune.unfreeze_from.int"). */
  pathOf(loc) {
    for (let n = loc.length; n > 0; n -= 1) {
      const candidate = loc.slice(0, n).join(".");
      if (this.entries.has(candidate)) return candidate;
    }
    return null;
  }

  #field(path, label, input, hintText, { rule = null, check = false } = {}) {
    const id = this.idFor(path);
    Object.assign(input, { id, name: path });
    input.dataset.path = path;
    input.setAttribute("data-testid", `field-${path}`);
    const error = h("p", { class: "field-error", id: `${id}-error`, "data-testid": `error-${path}`, hidden: true });
    const labelEl = h("label", { for: id }, label);
    const wrap = check ? h("div", { class: "field field-check" }, input, labelEl, error) : h("div", { class: "field" }, labelEl, input, error);
    this.entries.set(path, { input, wrap, error, rule });
    this.setHint(path, hintText);
    const forget = () => {
      if (!error.hidden) this.showError(path, null);
    };
    input.addEventListener("input", forget);
    input.addEventListener("change", forget);
    return wrap;
  }
}

/** <option>s for values or [value, text] pairs, the one equal to `selected` selected. */
export function selectOptions(options, selected) {
  return options.map((o) => {
    const [value, text] = Array.isArray(o) ? o : [o, o];
    return h("option", { value, selected: String(value) === String(selected) }, text);
  });
}

// ---------------------------------------------------------------- the error summary

/** The box above a form that lists its problems, each linked to its field. */
export function errorSummary() {
  return h("div", { class: "alert alert-error", role: "alert", tabindex: "-1", "data-testid": "form-errors", hidden: true });
}

export function hideSummary(summary) {
  summary.hidden = true;
  clear(summary);
}

/** Fill the summary with entries [{path|null, label|null, message}] and move the focus to it. */
export function showSummary(summary, fields, entries) {
  clear(summary);
  const heading = entries.length === 1 ? "Please fix this:" : `Please fix these ${entries.length} problems:`;
  summary.append(h("p", {}, h("strong", {}, heading)), h("ul", {}, entries.map((entry) => summaryItem(fields, entry))));
  summary.hidden = false;
  summary.focus();
}

function summaryItem(fields, { path, label, message }) {
  let name = label ? h("strong", {}, label) : null;
  if (path && fields.has(path)) {
    const id = fields.idFor(path);
    name = h("a", { href: `#${id}`, "data-focus": id, onclick: focusField }, label || path);
  }
  return h("li", {}, name, label || path ? ": " : "", h("span", { class: "pre-line" }, message));
}

function focusField(e) {
  e.preventDefault(); // a real href for keyboards and screen readers, but no hash navigation
  const el = document.getElementById(e.currentTarget.dataset.focus);
  if (el) el.focus();
}

/** Summary entries for the API's error (FastAPI's [{loc, msg, type}] or a string); each located one is also shown at its field. */
export function apiErrorEntries(fields, err) {
  const detail = err.detail;
  if (!Array.isArray(detail)) return [{ path: null, label: err.status ? `HTTP ${err.status}` : null, message: errorText(err) }];
  return detail.map((item) => {
    const loc = Array.isArray(item && item.loc) ? item.loc.filter((p) => p !== "body").map(String) : [];
    const path = fields.pathOf(loc);
    const message = (item && (item.msg || item.message)) || JSON.stringify(item);
    if (path) fields.showError(path, message);
    return { path, label: path ? fields.labelOf(path) : loc.join(".") || null, message };
  });
}
