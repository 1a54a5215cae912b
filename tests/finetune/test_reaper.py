"""The stale-job sweep, against a real Redis the tests started (its own database)."""

from __future__ import annotations

import time

import pytest

from finetune.execution.reaper import Reaper, requeue_stale_jobs
from finetune.ml.spec import JobSpec
from finetune.settings import Settings
from finetune.stores.jobs import JobStore


@pytest.fixture
def jobs(redis_db):
    store = JobStore.from_url(redis_db)
    store.redis.flushdb()
    yield store
    store.redis.flushdb()


def running_job(jobs: JobStore, *, heartbeat_age_s: float | None) -> str:
    record = jobs.create(
        JobSpec(dataset_id="ds", backbone="mobilenet", alpha=0.25, weights="none", image_size=32, finetune=None)
    )
    jobs.update(record["id"], {"status": "running", "worker": "w1"})
    if heartbeat_age_s is not None:
        jobs.redis.hset(f"finetune:job:{record['id']}", "heartbeat", time.time() - heartbeat_age_s)
    return record["id"]


def test_only_jobs_whose_worker_went_silent_are_requeued(jobs):
    stale = running_job(jobs, heartbeat_age_s=60)
    silent_from_start = running_job(jobs, heartbeat_age_s=None)
    alive = running_job(jobs, heartbeat_age_s=1)
    enqueued: list[str] = []
    requeued = requeue_stale_jobs(jobs, stale_after_s=30, enqueue=enqueued.append)
    assert sorted(requeued) == sorted([stale, silent_from_start]) == sorted(enqueued)
    assert jobs.get(stale)["status"] == "queued" and jobs.get(stale)["worker"] is None
    assert jobs.get(alive)["status"] == "running"
    assert requeue_stale_jobs(jobs, stale_after_s=30, enqueue=enqueued.append) == []


def test_the_reaper_thread_sweeps_and_stops(jobs, redis_db):
    stale = running_job(jobs, heartbeat_age_s=60)
    settings = Settings(redis_url=redis_db, job_stale_after_s=4)
    enqueued: list[str] = []
    reaper = Reaper(settings, enqueue=enqueued.append)
    reaper.start()
    deadline = time.monotonic() + 120  # a hang guard: the sweep runs every few seconds
    while not enqueued and time.monotonic() < deadline:
        time.sleep(0.1)
    reaper.stopped.set()
    reaper.join(5)
    assert enqueued == [stale]
    assert not reaper.is_alive()
