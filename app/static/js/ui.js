// Small DOM helpers, formatters and the shared widgets (notices, dialogs, progress bars).

/**
 * Build an element: h("a", {href: "#/jobs", class: "btn", onclick: fn}, "Jobs", child, [more]).
 * Attributes that are null, undefined or false are left out; true gives an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in el) {
      el.value = value;
    } else if (name === "checked" || name === "selected" || name === "disabled" || name === "hidden") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// ---------------------------------------------------------------- formatting

export const DASH = "—";

/** A number: integers as they are, others with `digits` decimals (or always, with {fixed: true}). */
export function fmtNum(value, digits = 3, { fixed = false } = {}) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return DASH;
  const n = Number(value);
  return Number.isInteger(n) && !fixed ? String(n) : n.toFixed(digits);
}

export function fmtPct(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return DASH;
  return `${(Number(value) * 100).toFixed(digits)}%`;
}

export function fmtDate(iso) {
  if (!iso) return DASH;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString();
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return DASH;
  if (Number(seconds) < 10) return `${Math.max(0, Number(seconds)).toFixed(1)}s`;
  let s = Math.round(Number(seconds));
  const hours = Math.floor(s / 3600);
  s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  s -= minutes * 60;
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${s}s`;
  return `${s}s`;
}

export function fmtBytes(bytes) {
  if (!Number.isFinite(bytes)) return DASH;
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  let v = bytes;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function shortId(id) {
  if (!id) return DASH;
  const s = String(id);
  return s.length > 10 ? s.slice(0, 8) : s;
}

/** Turn the API's error detail (a string, FastAPI's [{loc, msg, type}] list, or anything) into text. */
export function formatDetail(detail) {
  if (detail === null || detail === undefined) return "Unknown error";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        if (item && typeof item === "object" && "msg" in item) {
          const loc = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "body").join(".") : "";
          return loc ? `${loc}: ${item.msg}` : item.msg;
        }
        return typeof item === "string" ? item : JSON.stringify(item);
      })
      .join("\n");
  }
  if (typeof detail === "object" && typeof detail.message === "string") return detail.message;
  return JSON.stringify(detail);
}

export function errorText(err) {
  if (!err) return "Unknown error";
  if (err.detail !== undefined) return formatDetail(err.detail);
  return err.message || String(err);
}

// ---------------------------------------------------------------- widgets

/** An inline error box; role=alert so screen readers announce it. */
export function errorBox(err, testid = "error") {
  const status = err && err.status ? ` (HTTP ${err.status})` : "";
  return h(
    "div",
    { class: "alert alert-error", role: "alert", "data-testid": testid },
    h("strong", {}, `Error${status}: `),
    h("span", { class: "pre-line" }, errorText(err)),
  );
}

/** Put an error (or nothing) into a slot element. */
export function setError(slot, err, testid = "error") {
  clear(slot);
  if (err) slot.append(errorBox(err, testid));
}

/** A toast in the notices area. Errors stay until closed; others go after a few seconds. */
export function notify(message, kind = "info") {
  const area = document.getElementById("notices");
  if (!area) return;
  const close = h("button", { type: "button", class: "btn btn-ghost btn-small", "aria-label": "Dismiss" }, "×");
  const note = h(
    "div",
    { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status", "data-testid": `notice-${kind}` },
    h("span", { class: "pre-line" }, message),
    close,
  );
  close.addEventListener("click", () => note.remove());
  area.append(note);
  if (kind !== "error") setTimeout(() => note.remove(), 6000);
}

export function notifyError(err, prefix = "") {
  if (err && err.name === "AbortError") return;
  const status = err && err.status ? ` (HTTP ${err.status})` : "";
  notify(`${prefix}${prefix ? ": " : ""}${errorText(err)}${status}`, "error");
}

/** <progress> plus a percentage text, for 0..1 values. */
export function progressBar(value, { testid = "progress", label = "Progress" } = {}) {
  const bar = h("progress", { max: "1", value: "0", "aria-label": label, "data-testid": testid });
  const text = h("span", { class: "progress-text", "data-testid": `${testid}-text` });
  const wrap = h("div", { class: "progress" }, bar, text);
  const set = (v) => {
    const x = Math.min(1, Math.max(0, Number(v) || 0));
    bar.value = x;
    bar.dataset.value = String(x);
    text.textContent = `${Math.round(x * 100)}%`;
  };
  set(value);
  return { el: wrap, set };
}

export const FINAL_STATUSES = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status || "unknown"}`, "data-status": status || "" }, status || DASH);
}

export function updateBadge(el, status) {
  el.className = `badge badge-${status || "unknown"}`;
  el.dataset.status = status || "";
  el.textContent = status || DASH;
}

/** A definition list from [term, value] pairs (value: string or node). */
export function dl(pairs, attrs = {}) {
  return h(
    "dl",
    { class: "facts", ...attrs },
    pairs.filter(Boolean).map(([term, value, testid]) => [
      h("dt", {}, term),
      h("dd", testid ? { "data-testid": testid } : {}, value ?? DASH),
    ]),
  );
}

/** A table; rows are arrays of cells (string or node); headers give the phone-layout labels. */
export function table(headers, rows, { caption, testid, rowAttrs, responsive = true } = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      // responsive: one card per row at phone width; otherwise the table scrolls sideways if it must
      { class: responsive ? "table table-responsive" : "table", "data-testid": testid },
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h(
        "tbody",
        {},
        rows.map((cells, i) =>
          h(
            "tr",
            rowAttrs ? rowAttrs(i) : {},
            cells.map((cell, j) => h("td", { "data-label": headers[j] }, cell ?? DASH)),
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------- dialogs

/** Ask yes/no in a <dialog>; resolves true for the confirm button. */
export function confirmDialog(message, { confirmLabel = "OK", danger = false } = {}) {
  const dialog = document.getElementById("confirm-dialog");
  const text = document.getElementById("confirm-message");
  const ok = document.getElementById("confirm-ok");
  text.textContent = message;
  ok.textContent = confirmLabel;
  ok.className = danger ? "btn btn-danger" : "btn btn-primary";
  return new Promise((resolve) => {
    const onClose = () => {
      dialog.removeEventListener("close", onClose);
      resolve(dialog.returnValue === "ok");
    };
    dialog.returnValue = "";
    dialog.addEventListener("close", onClose);
    dialog.showModal();
  });
}

/** A file drop target: calls onFiles(FileList) for drops; the element gets a highlight while dragging. */
export function makeDropZone(zone, onFiles) {
  let depth = 0;
  zone.addEventListener("dragenter", (e) => {
    e.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files.length) onFiles(e.dataTransfer.files);
  });
}

/** Encode a dataset-relative path ("cats/img 1.jpg") segment by segment for a URL. */
export function encodePath(path) {
  return String(path)
    .split("/")
    .map((part) => encodeURIComponent(part))
    .join("/");
}

/** Page heading that the router focuses after a navigation. */
export function pageTitle(text, testid) {
  document.title = `${text} · Fine-tune`;
  return h("h1", { tabindex: "-1", class: "page-title", "data-testid": testid }, text);
}
