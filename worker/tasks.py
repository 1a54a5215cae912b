"""The tasks: run a job, or build a model's export, in a child process, so each gets a fresh TensorFlow and
returns its memory."""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import time

from finetune.errors import NotFound
from finetune.execution.protocol import (
    BUILD_EXPORT_TASK,
    EXIT_DONE,
    EXIT_OWNED_ELSEWHERE,
    RUN_BATCH_TASK,
    RUN_JOB_TASK,
    batch_runner_command,
    exporter_command,
    runner_command,
    worker_id,
)
from finetune.settings import get_settings
from finetune.states import FINAL_STATUSES, JobStatus
from finetune.stores.batches import BatchStore
from finetune.stores.jobs import JobStore
from worker.celery_app import app

log = logging.getLogger("worker.tasks")
PR_SET_PDEATHSIG = 1


class JobProcessFailed(RuntimeError):
    pass


def _die_with_parent() -> None:
    """The job process gets SIGKILL when the worker dies, so no training outlives its worker."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def run_job_process(job_id: str, *, command=runner_command, store=JobStore) -> int:
    process = subprocess.Popen(command(job_id), preexec_fn=_die_with_parent)
    code = process.wait()
    if code not in (EXIT_DONE, EXIT_OWNED_ELSEWHERE):
        # It died holding the job, and its heartbeat is still fresh: the next job process would take
        # the job for running elsewhere and leave it to the reaper, JOB_STALE_AFTER_S later.
        records = store.from_url(get_settings().redis_url)
        records.release_heartbeat(job_id, worker_id(process.pid))
    return code


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    """Runs the job's process until the job reaches a final state; a crashed process is resumed
    from its checkpoint until the attempt limit, after which the runner marks the job failed."""
    return _run_to_final(job_id, command=runner_command, store=JobStore)


def _run_to_final(record_id: str, *, command, store) -> str:
    """Runs `command(record_id)` in a child process again until the record (a job or a batch) is final."""
    records = store.from_url(get_settings().redis_url)
    kind = store.KIND
    while True:
        code = run_job_process(record_id, command=command, store=store)
        if code == EXIT_OWNED_ELSEWHERE:
            log.info("%s %s is running on another live worker; this delivery is a duplicate", kind, record_id)
            return "duplicate"
        record = records.get(record_id)
        if record["status"] in FINAL_STATUSES:
            if record["status"] == JobStatus.FAILED and code != EXIT_DONE:
                error = record["error"] or {}
                raise JobProcessFailed(f"{kind} {record_id} failed: {error.get('type')}: {error.get('message')}")
            return record["status"]
        log.warning("%s %s process exited with %s while %s; running it again", kind, record_id, code, record["status"])


@app.task(name=RUN_BATCH_TASK, acks_late=True, reject_on_worker_lost=True)
def run_batch(batch_id: str) -> str:
    """Runs the batch's process until the batch reaches a final state; a crashed process is resumed at
    its first unwritten chunk until the attempt limit, after which the runner marks the batch failed."""
    return _run_to_final(batch_id, command=batch_runner_command, store=BatchStore)


# --- exports (issue 13) -------------------------------------------------------------------------

EXPORT_CANCEL_POLL_S = 0.5


@app.task(name=BUILD_EXPORT_TASK, acks_late=True, reject_on_worker_lost=True)
def build_export(model_id: str, fmt: str, build_id: str) -> str:
    """Runs the export's process to its end; a cancel request kills the process (a conversion cannot be
    interrupted from inside) and records the build cancelled."""
    from finetune.execution.exporter import export_store

    store = export_store(get_settings())
    process = subprocess.Popen(exporter_command(model_id, fmt, build_id), preexec_fn=_die_with_parent)
    while process.poll() is None:
        try:
            cancelled = store.cancel_requested(model_id, fmt, build_id)
        except Exception:  # the store unreachable for a moment: ask again at the next poll
            log.warning("could not check export %s/%s for a cancel", model_id, fmt, exc_info=True)
            cancelled = False
        if cancelled:
            process.kill()
            process.wait()
            break
        time.sleep(EXPORT_CANCEL_POLL_S)
    try:
        record = store.get(model_id, fmt)
    except NotFound:
        store.remove_leftovers(model_id)
        return "model deleted"
    if record["id"] != build_id or record["status"] in FINAL_STATUSES:
        return record["status"]
    if store.cancel_requested(model_id, fmt, build_id):
        return store.finish(record, JobStatus.CANCELLED)["status"]
    message = f"the export process exited with code {process.returncode} before finishing"
    return store.finish(record, JobStatus.FAILED, error={"type": "ExportProcessFailed", "message": message})["status"]
