// The REST client: fetch with the API key, one key dialog on 401, upload progress, and SSE over fetch.
//
// Paths are relative ("datasets", not "/datasets") so the dashboard also works behind a path prefix.

import { formatDetail, notifyError } from "./ui.js";

const KEY_STORAGE = "finetune.apiKey";
const MAX_KEY_TRIES = 3;

export class ApiError extends Error {
  constructor(status, detail) {
    super(formatDetail(detail));
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

// ---------------------------------------------------------------- the API key

export function getKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage can be disabled; the key then lasts only as long as this call chain.
  }
  updateKeyButton();
}

export function updateKeyButton() {
  const button = document.getElementById("api-key-button");
  if (button) button.textContent = getKey() ? "API key ✓" : "API key";
}

let pendingPrompt = null;

/**
 * Show the key dialog (only one at a time: concurrent 401s share it).
 * Resolves true when the user saved a key, false when they cancelled.
 */
export function askForKey(message) {
  if (!pendingPrompt) {
    pendingPrompt = showKeyDialog(message).finally(() => {
      pendingPrompt = null;
    });
  }
  return pendingPrompt;
}

function showKeyDialog(message) {
  const dialog = document.getElementById("api-key-dialog");
  const input = document.getElementById("api-key-input");
  const text = document.getElementById("api-key-message");
  const forget = document.getElementById("api-key-forget");
  text.textContent = message;
  input.value = "";
  forget.hidden = !getKey();
  return new Promise((resolve) => {
    const onClose = () => {
      dialog.removeEventListener("close", onClose);
      if (dialog.returnValue === "save" && input.value.trim()) {
        setKey(input.value.trim());
        resolve(true);
      } else {
        if (dialog.returnValue === "forget") setKey("");
        resolve(false);
      }
      input.value = "";
    };
    dialog.returnValue = "";
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    input.focus();
  });
}

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

async function keyFor401(tries) {
  const message =
    tries === 0
      ? "This service needs an API key. It is kept for this browser tab only (sessionStorage)."
      : "The API refused that key. Enter another one.";
  return askForKey(message);
}

// ---------------------------------------------------------------- requests

async function errorFrom(res) {
  let detail;
  const text = await res.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    detail = body && typeof body === "object" && "detail" in body ? body.detail : body;
  } catch {
    detail = text || res.statusText || `HTTP ${res.status}`;
  }
  return new ApiError(res.status, detail);
}

/**
 * fetch() with the key; on 401 asks for a key and retries.
 * Options: method, json (sent as JSON), body (e.g. FormData), headers, signal, raw (return the Response).
 * Resolves the parsed JSON (or null for an empty body); rejects with ApiError ({status, detail}).
 */
export async function request(path, { method = "GET", json, body, headers, signal, raw = false } = {}) {
  for (let tries = 0; ; tries += 1) {
    const h = authHeaders(headers);
    let payload = body;
    if (json !== undefined) {
      h.set("Content-Type", "application/json");
      payload = JSON.stringify(json);
    }
    if (!h.has("Accept")) h.set("Accept", "application/json");
    let res;
    try {
      res = await fetch(path, { method, headers: h, body: payload, signal, cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `Network error: cannot reach the API (${err.message})`);
    }
    if (res.status === 401 && tries < MAX_KEY_TRIES && (await keyFor401(tries))) continue;
    if (!res.ok) throw await errorFrom(res);
    if (raw) return res;
    const text = await res.text();
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
}

export const api = {
  get: (path, opts) => request(path, opts),
  post: (path, json, opts) => request(path, { ...opts, method: "POST", json }),
  put: (path, json, opts) => request(path, { ...opts, method: "PUT", json }),
  postForm: (path, form, opts) => request(path, { ...opts, method: "POST", body: form }),
  del: (path, opts) => request(path, { ...opts, method: "DELETE" }),
};

/** A list endpoint's items: {data, count} (a bare array is accepted too). */
export function items(body) {
  if (Array.isArray(body)) return body;
  return (body && Array.isArray(body.data) && body.data) || [];
}

// ---------------------------------------------------------------- upload with progress

/**
 * POST a FormData with XMLHttpRequest so the upload progress can be shown.
 * onProgress(fraction or null when unknown). Returns {promise, abort}.
 */
export function upload(path, form, { onProgress } = {}) {
  let xhr = null;
  let aborted = false;
  const once = () =>
    new Promise((resolve, reject) => {
      xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.setRequestHeader("Accept", "application/json");
      const key = getKey();
      if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
      xhr.upload.addEventListener("progress", (e) => {
        if (onProgress) onProgress(e.lengthComputable ? e.loaded / e.total : null);
      });
      xhr.addEventListener("load", () => resolve(xhr));
      xhr.addEventListener("error", () => reject(new ApiError(0, "Network error: the upload did not reach the API")));
      xhr.addEventListener("abort", () => reject(new DOMException("Upload cancelled", "AbortError")));
      xhr.send(form);
    });
  const promise = (async () => {
    for (let tries = 0; ; tries += 1) {
      const res = await once();
      if (res.status === 401 && !aborted && tries < MAX_KEY_TRIES && (await keyFor401(tries))) continue;
      let body = null;
      try {
        body = res.responseText ? JSON.parse(res.responseText) : null;
      } catch {
        body = res.responseText;
      }
      if (res.status < 200 || res.status >= 300) {
        const detail = body && typeof body === "object" && "detail" in body ? body.detail : body || `HTTP ${res.status}`;
        throw new ApiError(res.status, detail);
      }
      return body;
    }
  })();
  return {
    promise,
    abort() {
      aborted = true;
      if (xhr) xhr.abort();
    },
  };
}

// ---------------------------------------------------------------- server-sent events over fetch

/**
 * Read a text/event-stream with fetch() (EventSource cannot send the Authorization header).
 * Calls onEvent({event, data, id}) per event; resolves when the server ends the stream.
 */
export async function readEvents(path, { onEvent, signal }) {
  const res = await request(path, { raw: true, signal, headers: { Accept: "text/event-stream" } });
  if (!res.body) throw new ApiError(0, "This browser cannot read streamed responses");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let event = "message";
  let id = null;
  const dispatch = () => {
    if (data.length) onEvent({ event, data: data.join("\n"), id });
    data = [];
    event = "message";
  };
  const line = (raw) => {
    const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (text === "") return dispatch();
    if (text.startsWith(":")) return undefined; // a comment / keep-alive
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value || "message";
    else if (field === "id") id = value;
    return undefined;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) !== -1) {
        line(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
      }
    }
    if (buffer) line(buffer);
    dispatch();
  } finally {
    reader.releaseLock();
  }
}

/** Fetch a file with the key and return a blob: URL for it (the caller revokes it). */
export async function blobUrl(path, { signal } = {}) {
  const res = await request(path, { raw: true, signal, headers: { Accept: "*/*" } });
  return URL.createObjectURL(await res.blob());
}

/**
 * Download a file with the key while `button` shows it is busy: the name from the
 * response's Content-Disposition, else `fallbackName`; failures are notified.
 */
export async function downloadWith(button, path, fallbackName) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Downloading…";
  try {
    const res = await request(path, { raw: true, headers: { Accept: "*/*" } });
    const blob = await res.blob();
    const disposition = res.headers.get("Content-Disposition") || "";
    const match = /filename\*=UTF-8''([^;]+)|filename="?([^";]+)"?/i.exec(disposition);
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = match ? decodeURIComponent(match[1] || match[2]) : fallbackName;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    notifyError(err, "Download failed");
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}
