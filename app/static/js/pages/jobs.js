// #/jobs (live list, polled every 2 s) and #/jobs/{id} (live over server-sent events, curves, cancel).

import { api, items, readEvents } from "../api.js";
import { trainingCurves } from "../charts.js";
import { enumValues, openapi } from "../schema.js";
import {
  DASH,
  FINAL_STATUSES,
  clear,
  confirmDialog,
  dl,
  fmtDate,
  fmtDuration,
  fmtNum,
  h,
  notify,
  notifyError,
  pageTitle,
  progressBar,
  setError,
  shortId,
  statusBadge,
  table,
  updateBadge,
} from "../ui.js";

const POLL_MS = 2000;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

function datasetOf(job) {
  return job.dataset_id || (job.spec && job.spec.dataset_id) || null;
}

function backboneOf(job) {
  const spec = job.spec || {};
  if (!spec.backbone) return DASH;
  return spec.alpha ? `${spec.backbone} (α ${spec.alpha})` : spec.backbone;
}

/** "3 / 25" for the current phase; a dash before training has started. */
function countText(n, total) {
  if (n === null || n === undefined || !total) return DASH;
  return `${n} / ${total}`;
}

function epochText(job) {
  return countText(job.epoch, job.epochs);
}

function etaText(job) {
  if (FINAL_STATUSES.has(job.status)) return DASH;
  return job.eta_seconds === null || job.eta_seconds === undefined ? DASH : fmtDuration(job.eta_seconds);
}

// ---------------------------------------------------------------- the list

export async function jobsPage(root, ctx, _params, query) {
  const statuses = enumValues(await openapi(), "JobStatus"); // the API's JobStatus, in its order
  const statusFilter = statuses.includes(query.get("status")) ? query.get("status") : "";
  const filter = h(
    "select",
    { id: "jobs-status-filter", "data-testid": "jobs-status-filter" },
    h("option", { value: "" }, "All"),
    statuses.map((s) => h("option", { value: s, selected: s === statusFilter }, s)),
  );
  filter.addEventListener("change", () => {
    location.hash = filter.value ? `#/jobs?status=${filter.value}` : "#/jobs";
  });
  const errorSlot = h("div");
  const tbody = h("tbody");
  const empty = h("p", { class: "muted", "data-testid": "jobs-empty", hidden: true }, "No jobs yet.");
  const headers = ["Job", "Dataset", "Backbone", "Status", "Phase", "Epoch", "Progress", "ETA", "Created"];
  const tableEl = h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "table table-responsive", "data-testid": "jobs-table" },
      h("caption", {}, "Training jobs, updated every 2 seconds"),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      tbody,
    ),
  );
  root.append(
    pageTitle("Jobs", "jobs-title"),
    h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field field-inline" }, h("label", { for: "jobs-status-filter" }, "Status"), filter),
      h("a", { class: "btn btn-primary", href: "#/jobs/new", "data-testid": "new-job-link" }, "New job"),
    ),
    errorSlot,
    h("section", { class: "card" }, empty, tableEl),
  );

  const rows = new Map(); // id -> {tr, update}
  const makeRow = (job) => {
    const badge = statusBadge(job.status);
    const bar = progressBar(job.progress, { testid: "job-row-progress", label: `Progress of job ${shortId(job.id)}` });
    const cells = {
      dataset: h("td", { "data-label": "Dataset" }),
      backbone: h("td", { "data-label": "Backbone" }),
      phase: h("td", { "data-label": "Phase", "data-testid": "job-row-phase" }),
      epoch: h("td", { "data-label": "Epoch" }),
      eta: h("td", { "data-label": "ETA" }),
    };
    const tr = h(
      "tr",
      { "data-testid": "job-row", "data-id": job.id },
      h("td", { "data-label": "Job" }, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "job-link" }, h("code", {}, shortId(job.id)))),
      cells.dataset,
      cells.backbone,
      h("td", { "data-label": "Status" }, badge),
      cells.phase,
      cells.epoch,
      h("td", { "data-label": "Progress" }, bar.el),
      cells.eta,
      h("td", { "data-label": "Created" }, fmtDate(job.created_at)),
    );
    const update = (j) => {
      tr.dataset.status = j.status;
      updateBadge(badge, j.status);
      bar.set(j.status === "succeeded" ? 1 : j.progress);
      const ds = datasetOf(j);
      cells.dataset.replaceChildren(ds ? h("a", { href: `#/datasets/${encodeURIComponent(ds)}` }, h("code", {}, shortId(ds))) : DASH);
      cells.backbone.textContent = backboneOf(j);
      cells.phase.textContent = j.phase || DASH;
      cells.epoch.textContent = epochText(j);
      cells.eta.textContent = etaText(j);
    };
    update(job);
    return { tr, update };
  };

  const refresh = async () => {
    const jobs = items(await api.get(statusFilter ? `jobs?status=${statusFilter}` : "jobs", { signal: ctx.signal }));
    jobs.sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
    const seen = new Set();
    jobs.forEach((job, i) => {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) {
        row = makeRow(job);
        rows.set(job.id, row);
      } else {
        row.update(job);
      }
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    empty.hidden = jobs.length > 0;
    tableEl.hidden = jobs.length === 0;
    empty.textContent = statusFilter ? `No ${statusFilter} jobs.` : "No jobs yet.";
  };

  await refresh();
  (async () => {
    while (ctx.active) {
      await sleep(POLL_MS, ctx.signal);
      if (!ctx.active) break;
      try {
        await refresh();
        setError(errorSlot, null);
      } catch (err) {
        if (err.name === "AbortError") break;
        setError(errorSlot, err, "jobs-error"); // shown, and the polling goes on
      }
    }
  })();
}

// ---------------------------------------------------------------- one job

export async function jobPage(root, ctx, [id]) {
  const title = pageTitle(`Job ${shortId(id)}`, "job-title");
  root.append(title);
  let job = await api.get(`jobs/${encodeURIComponent(id)}`, { signal: ctx.signal });

  const badge = statusBadge(job.status);
  const bar = progressBar(job.progress, { testid: "job-progress", label: "Job progress" });
  const field = (testid) => h("span", { "data-testid": testid });
  const f = {
    phase: field("job-phase"),
    epoch: field("job-epoch"),
    batch: field("job-batch"),
    eta: field("job-eta"),
    started: field("job-started"),
    finished: field("job-finished"),
    elapsed: field("job-elapsed"),
    metrics: field("job-metrics"),
  };
  const liveNote = h("span", { class: "muted small", "data-testid": "job-live" });
  const cancelBtn = h("button", { type: "button", class: "btn btn-danger", id: "job-cancel", "data-testid": "job-cancel" }, "Cancel job");
  const errorSlot = h("div", { "data-testid": "job-error-slot" });
  const outcome = h("div", { "data-testid": "job-outcome" });
  const liveError = h("div");
  const curves = trainingCurves(ctx);
  const historyWrap = h("div");
  const ds = datasetOf(job);

  root.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h(
      "section",
      { class: "card", "data-testid": "job-summary" },
      h("div", { class: "status-line" }, h("span", { "data-testid": "job-status" }, badge), liveNote),
      bar.el,
      dl([
        ["Id", h("code", {}, job.id)],
        ["Dataset", ds ? h("a", { href: `#/datasets/${encodeURIComponent(ds)}` }, h("code", {}, ds)) : DASH],
        ["Backbone", backboneOf(job)],
        ["Phase", f.phase],
        ["Epoch", f.epoch],
        ["Batch", f.batch],
        ["ETA", f.eta],
        ["Created", fmtDate(job.created_at)],
        ["Started", f.started],
        ["Finished", f.finished],
        ["Elapsed", f.elapsed],
        ["Latest metrics", f.metrics],
      ]),
      h("div", { class: "actions" }, cancelBtn),
      errorSlot,
      outcome,
      liveError,
    ),
    h("section", { class: "card", "aria-labelledby": "curves-title" }, h("h2", { id: "curves-title" }, "Training curves"), curves.el, historyWrap),
    h(
      "section",
      { class: "card" },
      h("details", {}, h("summary", {}, "Job spec"), h("pre", { class: "code", "data-testid": "job-spec" }, JSON.stringify(job.spec, null, 2))),
    ),
  );

  let lastHistoryLength = -1;
  const update = (next) => {
    job = next;
    root.dataset.status = job.status;
    updateBadge(badge, job.status);
    bar.set(job.status === "succeeded" ? 1 : job.progress);
    f.phase.textContent = job.phase || DASH;
    f.epoch.textContent = epochText(job);
    f.batch.textContent = countText(job.batch, job.batches);
    f.eta.textContent = etaText(job);
    f.started.textContent = fmtDate(job.started_at);
    f.finished.textContent = fmtDate(job.finished_at);
    const start = job.started_at ? Date.parse(job.started_at) : NaN;
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    f.elapsed.textContent = Number.isNaN(start) ? DASH : fmtDuration((end - start) / 1000);
    const metrics = job.metrics && typeof job.metrics === "object" ? job.metrics : {};
    f.metrics.textContent = Object.keys(metrics).length
      ? Object.entries(metrics)
          .filter(([, v]) => typeof v === "number")
          .map(([k, v]) => `${k} ${fmtNum(v)}`)
          .join(", ")
      : DASH;
    cancelBtn.hidden = FINAL_STATUSES.has(job.status);

    clear(errorSlot);
    if (job.status === "failed") {
      const err = job.error || {};
      errorSlot.append(
        h(
          "div",
          { class: "alert alert-error", role: "alert", "data-testid": "job-error" },
          h("strong", {}, "Failed: "),
          h("span", { class: "pre-line" }, `${err.type || "Error"}: ${err.message || "no message"}`),
        ),
      );
    }
    clear(outcome);
    if (job.status === "succeeded" && job.model_id) {
      outcome.append(
        h(
          "p",
          { class: "alert alert-success" },
          "Finished. ",
          h("a", { href: `#/models/${encodeURIComponent(job.model_id)}`, "data-testid": "job-model-link" }, `Open model ${shortId(job.model_id)} →`),
        ),
      );
    } else if (job.status === "cancelled") {
      outcome.append(h("p", { class: "alert" }, "This job was cancelled."));
    }

    const history = Array.isArray(job.history) ? job.history : [];
    if (history.length !== lastHistoryLength) {
      lastHistoryLength = history.length;
      curves.update(history);
      historyWrap.replaceChildren(historyTable(history));
    }
  };
  update(job);

  cancelBtn.addEventListener("click", async () => {
    const ok = await confirmDialog("Cancel this job? Training stops at the next batch.", { confirmLabel: "Cancel job", danger: true });
    if (!ok) return;
    cancelBtn.disabled = true;
    try {
      const body = await api.post(`jobs/${encodeURIComponent(job.id)}/cancel`);
      if (body && body.id === job.id && ctx.active) update(body);
      notify("Cancellation requested.", "info");
    } catch (err) {
      notifyError(err, "Could not cancel the job");
    } finally {
      cancelBtn.disabled = false;
    }
  });

  if (!FINAL_STATUSES.has(job.status)) follow(ctx, job.id, update, liveNote, liveError, () => job);
}

/** Keep a job up to date: SSE over fetch, reconnecting; polling when the stream cannot be read. */
async function follow(ctx, id, update, note, errorSlot, currentJob) {
  let failures = 0;
  let polling = false;
  while (ctx.active && !FINAL_STATUSES.has(currentJob().status)) {
    try {
      if (!polling) {
        note.textContent = "live";
        await readEvents(`jobs/${encodeURIComponent(id)}/events`, {
          signal: ctx.signal,
          onEvent: ({ data }) => {
            let next;
            try {
              next = JSON.parse(data);
            } catch {
              return; // not a job record (e.g. a keep-alive payload)
            }
            if (next && next.id === id && ctx.active) {
              update(next);
              failures = 0;
            }
          },
        });
        // The stream ended: at a final state normally; otherwise reconnect below after a pause.
        if (FINAL_STATUSES.has(currentJob().status)) break;
        await sleep(1000, ctx.signal);
      } else {
        note.textContent = "updating every 2 s";
        update(await api.get(`jobs/${encodeURIComponent(id)}`, { signal: ctx.signal }));
        await sleep(POLL_MS, ctx.signal);
      }
      setError(errorSlot, null);
    } catch (err) {
      if (err.name === "AbortError") return;
      failures += 1;
      // No stream (an old API, a proxy that buffers): fall back to polling the job.
      if (!polling && (err.status === 404 || err.status === 405 || failures >= 3)) polling = true;
      setError(errorSlot, err, "job-live-error");
      await sleep(Math.min(10000, 1000 * 2 ** Math.min(failures, 4)), ctx.signal);
    }
  }
  if (ctx.active) note.textContent = "";
}

/** "stopped early, kept epoch 4" on a phase's last row when early stopping watched it; else empty. */
function phaseEndNote(row) {
  const notes = [];
  if (row.stopped_early) notes.push("stopped early");
  if (row.kept_epoch != null) notes.push(`kept epoch ${row.kept_epoch}`);
  return notes.join(", ");
}

function historyTable(history) {
  if (!history.length) return h("div");
  return h(
    "details",
    { class: "history" },
    h("summary", {}, `Epochs (${history.length})`),
    table(
      ["Phase", "Epoch", "Loss", "Accuracy", "Val loss", "Val accuracy", "Learning rate", "Time", "Note"],
      history.map((r) => [
        r.phase,
        String(r.epoch ?? DASH),
        fmtNum(r.loss),
        fmtNum(r.accuracy),
        fmtNum(r.val_loss),
        fmtNum(r.val_accuracy),
        r.learning_rate == null ? DASH : Number(r.learning_rate).toPrecision(3),
        fmtDuration(r.seconds),
        phaseEndNote(r),
      ]),
      { caption: "Metrics per epoch", testid: "history-table" },
    ),
  );
}
