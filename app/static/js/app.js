// Entry point: the hash router, the page lifecycle (abort + cleanup on navigation), global error reporting.

import { askForKey, getKey, updateKeyButton } from "./api.js";
import { datasetPage, datasetsPage } from "./pages/datasets.js";
import { jobPage, jobsPage } from "./pages/jobs.js";
import { newJobPage } from "./pages/job_new.js";
import { modelPage, modelsPage } from "./pages/models.js";
import { clear, errorBox, h, notifyError, pageTitle } from "./ui.js";

const routes = [
  { pattern: /^\/datasets$/, nav: "datasets", page: datasetsPage },
  { pattern: /^\/datasets\/([^/]+)$/, nav: "datasets", page: datasetPage },
  { pattern: /^\/jobs$/, nav: "jobs", page: jobsPage },
  { pattern: /^\/jobs\/new$/, nav: "jobs-new", page: newJobPage },
  { pattern: /^\/jobs\/([^/]+)$/, nav: "jobs", page: jobPage },
  { pattern: /^\/models$/, nav: "models", page: modelsPage },
  { pattern: /^\/models\/([^/]+)$/, nav: "models", page: modelPage },
];

const main = document.getElementById("main");
let current = null; // {controller, cleanups}
let firstRender = true;

/** Per-page context: `signal` aborts fetches and streams, `onCleanup` runs when the page is left. */
function newContext() {
  const controller = new AbortController();
  const cleanups = [];
  return {
    controller,
    cleanups,
    signal: controller.signal,
    onCleanup(fn) {
      cleanups.push(fn);
    },
    get active() {
      return !controller.signal.aborted;
    },
    /** Draw the current page again (after a change it made, e.g. an alias moved). */
    reload() {
      render();
    },
  };
}

function leave(ctx) {
  if (!ctx) return;
  ctx.controller.abort();
  for (const fn of ctx.cleanups.splice(0).reverse()) {
    try {
      fn();
    } catch (err) {
      console.error("cleanup failed", err);
    }
  }
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, queryString = ""] = raw.split("?");
  return { path: path.replace(/\/+$/, "") || "/", query: new URLSearchParams(queryString) };
}

async function render() {
  const { path, query } = parseHash();
  if (path === "/") {
    location.replace("#/datasets");
    return;
  }
  leave(current);
  const ctx = newContext();
  current = ctx;
  const route = routes.find((r) => r.pattern.test(path));
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (route && link.dataset.nav === route.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Each page draws into its own root: a page still finishing after a navigation writes into a detached node.
  const root = h("div", { class: "page" });
  clear(main).append(root);
  main.dataset.route = path;
  delete main.dataset.ready;
  main.setAttribute("aria-busy", "true");
  try {
    if (!route) {
      root.append(pageTitle("Not found"), h("p", {}, `No page at #${path}. `, h("a", { href: "#/datasets" }, "Go to datasets")));
    } else {
      const params = path.match(route.pattern).slice(1).map(decodeURIComponent);
      await route.page(root, ctx, params, query);
    }
  } catch (err) {
    if (err && err.name === "AbortError") return;
    if (ctx.active) {
      console.error(err);
      root.append(errorBox(err, "page-error"));
    }
  } finally {
    if (ctx.active) {
      main.removeAttribute("aria-busy");
      main.dataset.ready = path;
      if (!firstRender) {
        const heading = main.querySelector("h1");
        if (heading) heading.focus({ preventScroll: false });
      }
      firstRender = false;
    }
  }
}

// Errors that escape a page's own handling are shown, never dropped.
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason && event.reason.name === "AbortError") return;
  notifyError(event.reason);
});
window.addEventListener("error", (event) => {
  if (event.error) notifyError(event.error);
});

document.getElementById("api-key-button").addEventListener("click", async () => {
  const saved = await askForKey(
    getKey()
      ? "An API key is set for this tab. Enter a new one, or forget it."
      : "Enter the API key, if the service needs one. It is kept for this browser tab only (sessionStorage).",
  );
  if (saved) render();
});
document.getElementById("api-key-cancel").addEventListener("click", () => {
  document.getElementById("api-key-dialog").close("cancel");
});
document.getElementById("confirm-cancel").addEventListener("click", () => {
  document.getElementById("confirm-dialog").close("cancel");
});
document.getElementById("skip-link").addEventListener("click", () => {
  const heading = main.querySelector("h1");
  (heading || main).focus();
});

// Charts read the colours when they are drawn: redraw the page when the colour scheme changes.
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => render());

window.addEventListener("hashchange", render);
updateKeyButton();
render();
