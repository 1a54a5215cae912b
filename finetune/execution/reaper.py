"""Re-queues running jobs whose worker went silent, without waiting for Redis' visibility timeout.

Every worker and the API run one; a Redis lock lets one of them sweep at a time, so a job whose
only worker died is handed back to the queue even while no worker is alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from finetune.errors import Conflict
from finetune.settings import Settings
from finetune.states import JobStatus
from finetune.stores.batches import BatchStore
from finetune.stores.jobs import JobStore

log = logging.getLogger("finetune.execution.reaper")
LOCK_KEY = "finetune:reaper-lock"


def requeue_stale_jobs(jobs: JobStore, *, stale_after_s: float, enqueue) -> list[str]:
    """Every running job with no heartbeat for `stale_after_s` goes back to `queued` and is enqueued again."""
    requeued = []
    now = time.time()
    for record in jobs.list(status=JobStatus.RUNNING):
        beat = jobs.last_heartbeat(record["id"])
        if beat is not None and now - beat < stale_after_s:
            continue
        try:
            jobs.update(
                record["id"], {"status": JobStatus.QUEUED, "worker": None}, allowed_from=frozenset({JobStatus.RUNNING})
            )
        except Conflict:  # it moved on (finished, cancelled, or another reaper took it) since the listing
            log.info("%s %s: not re-queued, it left `running` meanwhile", jobs.KIND, record["id"])
            continue
        enqueue(record["id"])
        requeued.append(record["id"])
        log.warning(
            "%s %s: worker silent for %.0f s; re-queued to resume from its checkpoint",
            jobs.KIND,
            record["id"],
            now - (beat or 0),
        )
    return requeued


class Reaper(threading.Thread):
    def __init__(
        self, settings: Settings, *, enqueue: Callable[[str], None], enqueue_batch: Callable[[str], None] | None = None
    ):
        super().__init__(daemon=True, name="finetune-reaper")
        self.settings, self.enqueue, self.enqueue_batch = settings, enqueue, enqueue_batch
        self.stopped = threading.Event()

    def run(self) -> None:
        jobs = JobStore.from_url(self.settings.redis_url)
        batches = BatchStore(jobs.redis)
        interval = max(1.0, self.settings.job_stale_after_s / 4)
        while not self.stopped.wait(interval):
            try:
                if jobs.redis.set(LOCK_KEY, "1", nx=True, ex=int(interval) + 1):
                    requeue_stale_jobs(jobs, stale_after_s=self.settings.job_stale_after_s, enqueue=self.enqueue)
                    if self.enqueue_batch is not None:
                        stale_after_s = self.settings.job_stale_after_s
                        requeue_stale_jobs(batches, stale_after_s=stale_after_s, enqueue=self.enqueue_batch)
            except redis.RedisError:
                log.warning("reaper could not reach Redis", exc_info=True)


def start_reaper(
    settings: Settings, *, enqueue: Callable[[str], None], enqueue_batch: Callable[[str], None] | None = None
) -> Reaper:
    """`enqueue_batch`: also re-queue batches whose worker went silent (as jobs are)."""
    reaper = Reaper(settings, enqueue=enqueue, enqueue_batch=enqueue_batch)
    reaper.start()
    return reaper
