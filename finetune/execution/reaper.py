"""Keeps job records honest and collects what dead or finished jobs left behind.

Every worker and the API run one. Each pass, under a Redis lock so one process sweeps at a time:
- a running job whose worker went silent is re-queued (without waiting for Redis' visibility
  timeout), unless its model is already in the store: then Redis lost the job's last writes
  (a crash, see docs/deploy.md) and the job becomes succeeded with that model;
- after Redis restarted (its run_id changed) and at the reaper's start, every queued or running job is
  checked against the model store the same way;
- checkpoints in the shared checkpoint store of jobs that are final, or whose record is gone, are
  removed once untouched for LEFTOVER_GRACE_S.
Without the lock, every pass: the same for this host's own cache (checkpoints staged for upload and
decoded-image caches), which no other host can see.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import redis

from finetune.errors import BrokerUnavailable, Conflict, NotFound
from finetune.ids import now_iso
from finetune.settings import Settings
from finetune.states import ACTIVE_STATUSES, FINAL_STATUSES, JobStatus
from finetune.stores.checkpoints import CheckpointStore, local_folders
from finetune.stores.jobs import JobStore
from finetune.stores.models import ModelStore

log = logging.getLogger("finetune.execution.reaper")
LOCK_KEY = "finetune:reaper-lock"


def checkpoint_store(settings: Settings) -> CheckpointStore:
    return CheckpointStore(settings.checkpoint_url, staging_root=settings.cache.checkpoints_root)


def succeed_from_model(jobs: JobStore, job_id: str, manifest: dict) -> dict | None:
    """Mark a queued or running job succeeded with the model its run saved (its final write was lost).
    None when the job left queued/running meanwhile."""
    history = manifest.get("history") or []
    patch = {
        "status": JobStatus.SUCCEEDED,
        "model_id": manifest["id"],
        "finished_at": now_iso(),
        "progress": 1.0,
        "phase": None,
        "eta_seconds": None,
        "error": None,
        "metrics": history[-1] if history else None,
        "history": history,
    }
    try:
        record = jobs.update(job_id, patch, allowed_from=ACTIVE_STATUSES)
    except Conflict:
        return None
    log.warning("job %s: its model %s is in the store; record reconciled to succeeded", job_id, manifest["id"])
    return record


def reconcile_with_models(jobs: JobStore, models: ModelStore, records: Iterable[dict]) -> list[str]:
    """Each queued/running job of `records` whose model is in the store becomes succeeded. Returns their ids."""
    records = [record for record in records if record["status"] in ACTIVE_STATUSES]
    if not records:
        return []
    saved = models.by_job()
    return [
        record["id"]
        for record in records
        if record["id"] in saved and succeed_from_model(jobs, record["id"], saved[record["id"]]) is not None
    ]


def requeue_stale_jobs(jobs: JobStore, *, stale_after_s: float, enqueue, models: ModelStore | None = None) -> list[str]:
    """Every running job with no heartbeat for `stale_after_s` goes back to `queued` and is enqueued again;
    with `models`, one whose model is already saved becomes succeeded instead."""
    now = time.time()
    stale = []
    for record in jobs.list(status=JobStatus.RUNNING):
        beat = jobs.last_heartbeat(record["id"])
        if beat is None or now - beat >= stale_after_s:
            stale.append((record, beat))
    reconciled = set(reconcile_with_models(jobs, models, [r for r, _ in stale])) if models is not None else set()
    requeued = []
    for record, beat in stale:
        if record["id"] in reconciled:
            continue
        try:
            jobs.update(
                record["id"], {"status": JobStatus.QUEUED, "worker": None}, allowed_from=frozenset({JobStatus.RUNNING})
            )
        except Conflict:  # it moved on (finished, cancelled, or another reaper took it) since the listing
            log.info("job %s: not re-queued, it left `running` meanwhile", record["id"])
            continue
        enqueue(record["id"])
        requeued.append(record["id"])
        log.warning(
            "job %s: worker silent for %.0f s; re-queued to resume from its checkpoint", record["id"], now - (beat or 0)
        )
    return requeued


def job_is_over(jobs: JobStore, job_id: str) -> bool:
    """Final, or its record is gone (deleted, or lost with Redis): nothing will resume it."""
    try:
        return jobs.get(job_id)["status"] in FINAL_STATUSES
    except NotFound:
        return True


def collectable(jobs: JobStore, folders: dict[str, float], *, grace_s: float) -> list[str]:
    """The job ids among `folders` (id -> newest change) untouched for `grace_s` whose job is over."""
    cutoff = time.time() - grace_s
    return [job_id for job_id, changed in folders.items() if changed <= cutoff and job_is_over(jobs, job_id)]


def collect_shared_checkpoints(jobs: JobStore, store: CheckpointStore, *, grace_s: float) -> list[str]:
    """The checkpoint store's leftovers (every host's; one process sweeps them). Returns the job ids removed."""
    removed = collectable(jobs, store.shared_jobs(), grace_s=grace_s)
    for job_id in removed:
        if store.is_remote:
            store.remove_shared(job_id)
        else:
            shutil.rmtree(store.working_dir(job_id), ignore_errors=True)
        log.info("job %s: leftover checkpoint removed from the checkpoint store", job_id)
    return removed


def collect_local_leftovers(jobs: JobStore, roots: Iterable[Path], *, grace_s: float) -> list[Path]:
    """This host's leftovers under `roots` (staged checkpoints, decoded images). Returns the folders removed."""
    removed = []
    for root in roots:
        for job_id in collectable(jobs, local_folders(root), grace_s=grace_s):
            shutil.rmtree(root / job_id, ignore_errors=True)
            removed.append(root / job_id)
            log.info("job %s: leftover %s removed", job_id, root / job_id)
    return removed


class Reaper(threading.Thread):
    def __init__(self, settings: Settings, *, enqueue: Callable[[str], None]):
        super().__init__(daemon=True, name="finetune-reaper")
        self.settings, self.enqueue = settings, enqueue
        self.stopped = threading.Event()
        self.redis_run_id: str | None = None  # the Redis server seen last; a new one may have lost writes

    def run(self) -> None:
        jobs = JobStore.from_url(self.settings.redis_url)
        models = ModelStore(self.settings.model_dir, cache_dir=self.settings.cache_dir)
        checkpoints = checkpoint_store(self.settings)
        interval = max(1.0, self.settings.job_stale_after_s / 4)
        while True:
            try:
                self.sweep(jobs, models, checkpoints, lock_s=int(interval) + 1)
            except (redis.RedisError, BrokerUnavailable, OSError):
                log.warning("reaper pass failed (Redis or a store unreachable); retrying", exc_info=True)
            if self.stopped.wait(interval):
                return

    def sweep(self, jobs: JobStore, models: ModelStore, checkpoints: CheckpointStore, *, lock_s: int) -> None:
        settings = self.settings
        collect_local_leftovers(
            jobs, [settings.cache.checkpoints_root, settings.cache.decoded_root], grace_s=settings.leftover_grace_s
        )
        if not jobs.redis.set(LOCK_KEY, "1", nx=True, ex=lock_s):
            return
        run_id = jobs.redis.info("server")["run_id"]
        if run_id != self.redis_run_id:
            reconciled = reconcile_with_models(jobs, models, jobs.list(limit=100_000))
            log.info("Redis server %s: %d job records reconciled with the model store", run_id, len(reconciled))
            self.redis_run_id = run_id
        requeue_stale_jobs(jobs, stale_after_s=settings.job_stale_after_s, enqueue=self.enqueue, models=models)
        collect_shared_checkpoints(jobs, checkpoints, grace_s=settings.leftover_grace_s)


def start_reaper(settings: Settings, *, enqueue: Callable[[str], None]) -> Reaper:
    reaper = Reaper(settings, enqueue=enqueue)
    reaper.start()
    return reaper
