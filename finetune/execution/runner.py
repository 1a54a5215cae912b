"""Runs one job in this process: load its record, train, save the model, report every step to Redis.

The worker starts one such process per job (`python -m finetune.execution.runner JOB_ID`), so TensorFlow
never runs in a forked child, a crash cannot take the worker down, and GPU memory is returned
when the job ends.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from finetune.errors import InvalidSpec, JobCancelled, JobTimedOut
from finetune.execution.protocol import OWNED, RUNNER_MODULE, exit_now, process_main, worker_id
from finetune.execution.reaper import checkpoint_store, succeed_from_model
from finetune.ids import now_iso
from finetune.ml.spec import JobSpec
from finetune.settings import Settings, get_settings
from finetune.states import FINAL_STATUSES, JobStatus, Phase
from finetune.stores.aliases import AliasStore, publish
from finetune.stores.archive import ArchiveLimits
from finetune.stores.checkpoints import CheckpointUploader
from finetune.stores.datasets import DatasetStore
from finetune.stores.jobs import JobStore, eta_seconds, overall_progress
from finetune.stores.models import ModelStore
from finetune.stores.records import Publication

log = logging.getLogger("finetune.execution.runner")
BATCH_REPORT_INTERVAL_S = 0.5


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    """Where the job's process writes its checkpoints: in the checkpoint store when it is a local folder,
    else in this host's cache (and from there, in the background, to the store)."""
    return checkpoint_store(settings).working_dir(job_id)


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
        batches_after_history = 0 if at_epoch_end else event.batch
        progress = overall_progress(self.spec, self.history, event.phase, batches_after_history, event.batches)
        patch = {"phase": event.phase, "progress": progress, "eta_seconds": eta_seconds(self.started_at, progress)}
        if event.phase in ("warmup", "finetune"):
            patch |= {"epoch": event.epoch, "epochs": event.epochs, "batch": event.batch, "batches": event.batches}
        if at_epoch_end:
            patch |= {"metrics": event.metrics, "history": self.history}
        self.jobs.update(self.job_id, patch, allowed_from=frozenset({JobStatus.RUNNING}))


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

    Returns OWNED without doing anything when another live worker is running the job (a
    duplicate delivery).
    An exception from training marks the job failed with its type and message, then propagates.
    """
    worker = worker or worker_id()
    jobs = JobStore.from_url(settings.redis_url)
    refused = _refusal(jobs, job_id, settings)
    if refused is not None:
        return refused
    record = _claim(jobs, job_id, worker)
    heartbeat = Heartbeat(jobs, job_id, worker, settings.heartbeat_s)
    heartbeat.start()
    checkpoints = checkpoint_store(settings)
    restored = checkpoints.restore(job_id)
    if restored is not None:
        log.info("job %s: resuming from the shared checkpoint after %d epochs", job_id, restored)
    uploader = checkpoints.uploader(job_id)
    try:
        status = _train_and_save(jobs, record, settings, uploader=uploader)
    finally:
        heartbeat.stopped.set()
        if uploader is not None:
            uploader.stop()
        shutil.rmtree(settings.cache.decoded(job_id), ignore_errors=True)
    checkpoints.remove(job_id)
    return status


def _refusal(jobs: JobStore, job_id: str, settings: Settings) -> str | None:
    """The status to answer without training: the job is final, owned by a live worker, cancelled while
    its worker was dead, or out of attempts. None when this process should run it."""
    record = jobs.get(job_id)
    checkpoints = checkpoint_store(settings)
    if record["status"] in FINAL_STATUSES:
        checkpoints.remove(job_id)  # e.g. cancelled while queued after its worker died
        return record["status"]
    beat = jobs.last_heartbeat(job_id)
    if record["status"] == JobStatus.RUNNING and beat and time.time() - beat < settings.job_stale_after_s:
        return OWNED
    if jobs.cancel_requested(job_id):
        _finish(jobs, job_id, JobStatus.CANCELLED)
        checkpoints.remove(job_id)  # cancelled while its worker was dead: resumed no more
        return JobStatus.CANCELLED
    if record["attempts"] > 0:  # it ran before: its model may be saved, the record's last writes lost
        manifest = ModelStore(settings.model_dir, cache_dir=settings.cache_dir).by_job().get(job_id)
        if manifest is not None and succeed_from_model(jobs, job_id, manifest) is not None:
            checkpoints.remove(job_id)
            return JobStatus.SUCCEEDED
    if record["attempts"] + 1 > settings.job_max_attempts:
        message = f"the job's worker stopped {record['attempts']} times before it finished; giving up"
        _finish(jobs, job_id, JobStatus.FAILED, error={"type": "WorkerLost", "message": message})
        checkpoints.remove(job_id)
        shutil.rmtree(settings.cache.decoded(job_id), ignore_errors=True)
        return JobStatus.FAILED
    return None


def _claim(jobs: JobStore, job_id: str, worker: str) -> dict:
    """Mark the job running on `worker` (one more attempt) and beat its heart once."""
    record = jobs.get(job_id)
    patch = {
        "status": JobStatus.RUNNING,
        "attempts": record["attempts"] + 1,
        "worker": worker,
        "error": None,
        "started_at": record["started_at"] or now_iso(),
    }
    record = jobs.update(job_id, patch, allowed_from=frozenset({JobStatus.QUEUED, JobStatus.RUNNING}))
    jobs.heartbeat(job_id, worker)
    return record


def _train_and_save(
    jobs: JobStore, record: dict, settings: Settings, *, uploader: CheckpointUploader | None = None
) -> str:
    """Train, save the model, and record the outcome: succeeded, cancelled, or failed with the error."""
    from finetune.ml.training import ProgressEvent, train

    job_id = record["id"]
    should_cancel = _cancellation(jobs, job_id, record["started_at"], settings.job_time_limit_s)
    reporter = ProgressReporter(jobs, record)
    spec = JobSpec.model_validate(record["spec"])
    models = ModelStore(settings.model_dir, cache_dir=settings.cache_dir)
    try:
        warm_start = _warm_start(spec, models)
        result = train(
            spec.training_spec(),
            dataset_dir=dataset_store(settings).images_dir(spec.dataset_id),
            progress=reporter,
            should_cancel=should_cancel,
            checkpoint_dir=checkpoint_dir(settings, job_id),
            cache_dir=settings.cache.decoded(job_id),
            max_pixels=settings.max_image_pixels,
            warm_start=warm_start,
        )
        if uploader is not None:
            uploader.stop()  # no more checkpoints: the model is about to be saved
        if should_cancel():
            raise JobCancelled("cancelled before saving")
        reporter(ProgressEvent(Phase.SAVING))
        manifest = models.save(
            result,
            job_id=job_id,
            dataset_id=spec.dataset_id,
            init_model_id=warm_start.model_id if warm_start else None,
        )
    except JobCancelled:
        _finish(jobs, job_id, JobStatus.CANCELLED)
        return JobStatus.CANCELLED
    except JobTimedOut as error:
        _finish(jobs, job_id, JobStatus.FAILED, error={"type": "JobTimedOut", "message": str(error)})
        return JobStatus.FAILED
    except Exception as error:
        _finish(jobs, job_id, JobStatus.FAILED, error={"type": type(error).__name__, "message": str(error)})
        checkpoint_store(settings).remove(job_id)
        raise
    last_epoch = result.history[-1] if result.history else None
    publication = _publish(spec, manifest, settings)
    _finish(
        jobs,
        job_id,
        JobStatus.SUCCEEDED,
        model_id=manifest["id"],
        progress=1.0,
        phase=None,
        metrics=last_epoch,
        history=result.history,
        publication=publication,
    )
    return JobStatus.SUCCEEDED


def _warm_start(spec: JobSpec, models: ModelStore):
    """The model `init_model_id` names (id or alias, resolved now), checked against the spec as at POST."""
    from finetune.ml.spec import warm_start_mismatches
    from finetune.ml.training import WarmStart

    if spec.init_model_id is None:
        return None
    manifest = models.resolve(spec.init_model_id)
    mismatches = warm_start_mismatches(spec, manifest)
    if mismatches:
        raise InvalidSpec(f"init_model_id {spec.init_model_id!r} does not fit: {'; '.join(mismatches)}")
    return WarmStart(models.load(manifest["id"]), list(manifest["classes"]), model_id=manifest["id"])


def _publish(spec: JobSpec, manifest: dict, settings: Settings) -> dict | None:
    """The spec's promotion gate, after the model is saved: the alias moves or the record says why not."""
    if spec.publish is None:
        return None
    gate = spec.publish
    try:
        publication = publish(
            AliasStore(settings.model_dir), manifest, alias=gate.alias, min_accuracy=gate.min_accuracy
        )
    except Exception as error:  # the model is saved: the job succeeded, its promotion did not
        log.exception("job %s: could not move alias %r", manifest.get("job_id"), gate.alias)
        reason = f"could not move the alias: {type(error).__name__}: {error}"
        publication = Publication(alias=gate.alias, published=False, reason=reason, min_accuracy=gate.min_accuracy)
    log.info("job %s: %s", manifest.get("job_id"), publication)
    return publication.model_dump(mode="json")


def _cancellation(jobs: JobStore, job_id: str, started_at: str, time_limit_s: int) -> Callable[[], bool]:
    """Asked after every batch: True once a cancel is requested; raises JobTimedOut past the time limit."""
    deadline = datetime.fromisoformat(started_at).timestamp() + time_limit_s

    def should_cancel() -> bool:
        if time.time() > deadline:
            raise JobTimedOut(f"the job ran past its time limit of {time_limit_s} s")
        return jobs.cancel_requested(job_id)

    return should_cancel


def main(argv: list[str] | None = None) -> int:
    return process_main(
        argv,
        module=RUNNER_MODULE,
        kind="job",
        run=lambda record_id: run_job(record_id, settings=get_settings()),
    )


if __name__ == "__main__":
    exit_now(main())
