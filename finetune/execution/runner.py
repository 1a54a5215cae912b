"""Runs one job in this process: load its record, train, save the model, report every step to Redis.

The worker starts one such process per job (`python -m finetune.execution.runner JOB_ID`), so TensorFlow
never runs in a forked child, a crash cannot take the worker down, and GPU memory is returned
when the job ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from finetune.errors import JobCancelled, JobTimedOut
from finetune.execution.protocol import EXIT_DONE, EXIT_OWNED_ELSEWHERE, worker_id
from finetune.ids import now_iso
from finetune.ml.spec import JobSpec
from finetune.settings import Settings, get_settings
from finetune.states import FINAL_STATUSES
from finetune.stores.archive import ArchiveLimits
from finetune.stores.datasets import DatasetStore
from finetune.stores.jobs import JobStore, eta_seconds, overall_progress
from finetune.stores.location import is_remote
from finetune.stores.models import ModelStore

log = logging.getLogger("finetune.execution.runner")
BATCH_REPORT_INTERVAL_S = 0.5


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    """Next to the job's model store when it is a shared local folder, else in the local cache."""
    if not is_remote(settings.model_dir):
        return Path(settings.model_dir).resolve() / ".checkpoints" / job_id
    return settings.cache.checkpoints(job_id)


def dataset_store(settings: Settings) -> DatasetStore:
    return DatasetStore(
        settings.data_dir,
        cache_dir=settings.cache_dir,
        limits=ArchiveLimits.from_settings(settings),
        max_pixels=settings.max_image_pixels,
    )


class ProgressReporter:
    """Turns training progress into job-record updates: every epoch, and batches at most twice a second."""

    def __init__(self, jobs: JobStore, record: dict):
        self.jobs, self.job_id = jobs, record["id"]
        self.spec, self.started_at = record["spec"], record["started_at"]
        self.history = list(record["history"])
        self.last_batch_report = 0.0

    def __call__(self, event) -> None:
        at_epoch_end = event.metrics is not None
        if event.batch and not at_epoch_end and time.monotonic() - self.last_batch_report < BATCH_REPORT_INTERVAL_S:
            return
        self.last_batch_report = time.monotonic()
        if event.history is not None:
            self.history = event.history
        progress = overall_progress(self.spec, self.history, event.phase, event.batch, event.batches)
        patch = {"phase": event.phase, "progress": progress, "eta_seconds": eta_seconds(self.started_at, progress)}
        if event.phase in ("warmup", "finetune"):
            patch |= {"epoch": event.epoch, "epochs": event.epochs, "batch": event.batch, "batches": event.batches}
        if at_epoch_end:
            patch |= {"metrics": event.metrics, "history": self.history}
        self.jobs.update(self.job_id, patch, allowed_from=frozenset({"running"}))


class Heartbeat(threading.Thread):
    def __init__(self, jobs: JobStore, job_id: str, worker: str, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.jobs, self.job_id, self.worker, self.interval = jobs, job_id, worker, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.jobs.heartbeat(self.job_id, self.worker)
            except Exception:  # a Redis blip must not kill training; the next beat retries
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
            self.stopped.wait(self.interval)


def _finish(jobs: JobStore, job_id: str, status: str, **patch) -> dict:
    return jobs.update(job_id, {"status": status, "finished_at": now_iso(), "eta_seconds": None, **patch})


def run_job(job_id: str, *, settings: Settings, worker: str | None = None) -> str:
    """Run `job_id` to a final state (or resume it from its checkpoint) and return that status.

    Returns "owned" without doing anything when another live worker is running the job (a
    duplicate delivery).
    An exception from training marks the job failed with its type and message, then propagates.
    """
    worker = worker or worker_id()
    jobs = JobStore.from_url(settings.redis_url)
    record = jobs.get(job_id)
    checkpoints = checkpoint_dir(settings, job_id)
    if record["status"] in FINAL_STATUSES:
        shutil.rmtree(checkpoints, ignore_errors=True)  # e.g. cancelled while queued after its worker died
        return record["status"]
    beat = jobs.last_heartbeat(job_id)
    if record["status"] == "running" and beat and time.time() - beat < settings.job_stale_after_s:
        return "owned"
    if jobs.cancel_requested(job_id):
        _finish(jobs, job_id, "cancelled")
        shutil.rmtree(checkpoints, ignore_errors=True)  # cancelled while its worker was dead: resumed no more
        return "cancelled"
    attempts = record["attempts"] + 1
    if attempts > settings.job_max_attempts:
        _finish(
            jobs,
            job_id,
            "failed",
            error={
                "type": "WorkerLost",
                "message": f"the job's worker stopped {record['attempts']} times before it finished; giving up",
            },
        )
        shutil.rmtree(checkpoints, ignore_errors=True)
        shutil.rmtree(settings.cache.decoded(job_id), ignore_errors=True)
        return "failed"
    record = jobs.update(
        job_id,
        {
            "status": "running",
            "attempts": attempts,
            "worker": worker,
            "error": None,
            "started_at": record["started_at"] or now_iso(),
        },
        allowed_from=frozenset({"queued", "running"}),
    )
    jobs.heartbeat(job_id, worker)
    heartbeat = Heartbeat(jobs, job_id, worker, settings.heartbeat_s)
    heartbeat.start()
    deadline = datetime.fromisoformat(record["started_at"]).timestamp() + settings.job_time_limit_s

    def should_cancel() -> bool:
        if time.time() > deadline:
            raise JobTimedOut(f"the job ran past its time limit of {settings.job_time_limit_s} s")
        return jobs.cancel_requested(job_id)

    from finetune.ml.training.recipe import ProgressEvent, train

    reporter = ProgressReporter(jobs, record)
    spec = JobSpec.model_validate(record["spec"])
    try:
        dataset_dir = dataset_store(settings).images_dir(spec.dataset_id)
        result = train(
            spec.training_spec(),
            dataset_dir=dataset_dir,
            progress=reporter,
            should_cancel=should_cancel,
            checkpoint_dir=checkpoints,
            cache_dir=settings.cache.decoded(job_id),
            max_pixels=settings.max_image_pixels,
        )
        if should_cancel():
            raise JobCancelled("cancelled before saving")
        reporter(ProgressEvent("saving"))
        store = ModelStore(settings.model_dir, cache_dir=settings.cache_dir)
        manifest = store.save(result, job_id=job_id, dataset_id=spec.dataset_id)
        _finish(
            jobs,
            job_id,
            "succeeded",
            model_id=manifest["id"],
            progress=1.0,
            phase=None,
            metrics=result.history[-1] if result.history else None,
            history=result.history,
        )
        status = "succeeded"
    except JobCancelled:
        _finish(jobs, job_id, "cancelled")
        status = "cancelled"
    except JobTimedOut as error:
        _finish(jobs, job_id, "failed", error={"type": "JobTimedOut", "message": str(error)})
        status = "failed"
    except Exception as error:
        _finish(jobs, job_id, "failed", error={"type": type(error).__name__, "message": str(error)})
        shutil.rmtree(checkpoints, ignore_errors=True)
        raise
    finally:
        heartbeat.stopped.set()
        shutil.rmtree(settings.cache.decoded(job_id), ignore_errors=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m finetune.execution.runner JOB_ID", file=sys.stderr)
        return 2
    status = run_job(args[0], settings=get_settings())
    log.info("job %s ended %s", args[0], status)
    return EXIT_OWNED_ELSEWHERE if status == "owned" else EXIT_DONE


if __name__ == "__main__":
    exit_code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skips TensorFlow's slow teardown: the job's state is already in Redis
