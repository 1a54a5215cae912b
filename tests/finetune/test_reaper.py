"""The stale-job sweep, against a real Redis the tests started (its own database)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from finetune.execution.reaper import (
    Reaper,
    checkpoint_store,
    collect_local_leftovers,
    collect_shared_checkpoints,
    reconcile_with_models,
    requeue_stale_jobs,
)
from finetune.execution.runner import run_job
from finetune.ml.spec import JobSpec
from finetune.settings import Settings
from finetune.stores.jobs import JobStore
from finetune.stores.models import ModelStore


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


def test_the_reaper_thread_sweeps_and_stops(jobs, redis_db, tmp_path):
    stale = running_job(jobs, heartbeat_age_s=60)
    settings = Settings(
        redis_url=redis_db, job_stale_after_s=4, model_dir=str(tmp_path / "models"), cache_dir=str(tmp_path / "cache")
    )
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


def saved_model(model_dir: Path, job_id: str, model_id: str = "m0del0000000001") -> dict:
    """A model folder as ModelStore.save leaves it (the manifest is all a listing reads)."""
    history = [{"phase": "warmup", "epoch": 1, "accuracy": 0.75}]
    manifest = {"id": model_id, "job_id": job_id, "created_at": "2026-01-01T00:00:00+00:00", "history": history}
    (model_dir / model_id).mkdir(parents=True)
    (model_dir / model_id / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_a_silent_job_whose_model_is_saved_becomes_succeeded_with_it_instead_of_running_again(jobs, tmp_path):
    """Redis lost the job's last write (`succeeded`): the store's manifest names the job."""
    finished = running_job(jobs, heartbeat_age_s=60)
    lost_worker = running_job(jobs, heartbeat_age_s=60)
    manifest = saved_model(tmp_path / "models", finished)
    enqueued: list[str] = []
    models = ModelStore(tmp_path / "models")
    requeued = requeue_stale_jobs(jobs, stale_after_s=30, enqueue=enqueued.append, models=models)
    assert requeued == enqueued == [lost_worker]
    record = jobs.get(finished)
    assert (record["status"], record["model_id"], record["progress"]) == ("succeeded", manifest["id"], 1.0)
    assert record["history"] == manifest["history"] and record["metrics"] == manifest["history"][-1]
    assert record["finished_at"]


def test_reconciling_leaves_final_jobs_and_jobs_without_a_model_alone(jobs, tmp_path):
    queued = jobs.create(JobSpec(dataset_id="ds", backbone="mobilenet", weights="none", finetune=None))["id"]
    failed = running_job(jobs, heartbeat_age_s=None)
    jobs.update(failed, {"status": "failed"})
    saved_model(tmp_path / "models", failed, "m0del0000000002")
    saved_model(tmp_path / "models", queued, "m0del0000000003")
    without_model = running_job(jobs, heartbeat_age_s=1)
    reconciled = reconcile_with_models(jobs, ModelStore(tmp_path / "models"), jobs.list())
    assert reconciled == [queued]
    assert jobs.get(queued)["model_id"] == "m0del0000000003"
    assert jobs.get(failed)["status"] == "failed" and jobs.get(failed)["model_id"] is None
    assert jobs.get(without_model)["status"] == "running"


def leftover(folder: Path, *, age_s: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    then = time.time() - age_s
    for path in (folder / "state.json", folder):
        os.utime(path, (then, then))
    return folder


def test_checkpoints_and_decoded_caches_of_final_or_forgotten_jobs_are_collected_after_the_grace(jobs, tmp_path):
    settings = Settings(redis_url="redis://unused", model_dir=str(tmp_path / "models"), cache_dir=str(tmp_path / "c"))
    final_old = running_job(jobs, heartbeat_age_s=None)
    final_fresh = running_job(jobs, heartbeat_age_s=None)
    for job_id in (final_old, final_fresh):
        jobs.update(job_id, {"status": "succeeded"})
    running_old = running_job(jobs, heartbeat_age_s=60)
    orphan = "0rphan0000000001"  # its record is gone
    store = checkpoint_store(settings)
    hour = 3600
    for job_id, age in ((final_old, 2 * hour), (final_fresh, 60), (running_old, 2 * hour), (orphan, 2 * hour)):
        leftover(store.working_dir(job_id), age_s=age)
        leftover(settings.cache.decoded(job_id), age_s=age)
        leftover(settings.cache.checkpoints(job_id), age_s=age)  # staged for an upload
    assert sorted(collect_shared_checkpoints(jobs, store, grace_s=hour)) == sorted([final_old, orphan])
    roots = [settings.cache.decoded_root, settings.cache.checkpoints_root]
    removed = collect_local_leftovers(jobs, roots, grace_s=hour)
    assert sorted(path.name for path in removed) == sorted([final_old, orphan] * 2)
    for job_id, kept in ((final_old, False), (orphan, False), (final_fresh, True), (running_old, True)):
        assert store.working_dir(job_id).exists() == kept
        assert settings.cache.decoded(job_id).exists() == kept
        assert settings.cache.checkpoints(job_id).exists() == kept
    assert store.working_dir(final_old).parent == (tmp_path / "models" / ".checkpoints")


def test_a_job_delivered_again_whose_model_is_saved_is_not_trained_again(jobs, redis_db, tmp_path):
    """The job process's own check: a job that ran before (attempts > 0) and whose model is in the store
    (Redis lost its final write, then the reaper re-queued it) ends succeeded with that model at once,
    its checkpoint removed."""
    settings = Settings(redis_url=redis_db, model_dir=str(tmp_path / "models"), cache_dir=str(tmp_path / "cache"))
    job_id = running_job(jobs, heartbeat_age_s=600)
    jobs.update(job_id, {"status": "queued", "attempts": 1, "worker": None})
    manifest = saved_model(tmp_path / "models", job_id)
    leftover(checkpoint_store(settings).working_dir(job_id), age_s=0)
    assert run_job(job_id, settings=settings) == "succeeded"
    record = jobs.get(job_id)
    assert (record["status"], record["model_id"], record["attempts"]) == ("succeeded", manifest["id"], 1)
    assert not checkpoint_store(settings).working_dir(job_id).exists()
    assert [m["id"] for m in ModelStore(tmp_path / "models").list()] == [manifest["id"]]


@pytest.mark.parametrize("store", ["model_dir", "data_dir"])
def test_checkpoints_cannot_share_a_store_folder_the_reaper_would_empty(store, tmp_path):
    folders = {"model_dir": str(tmp_path / "models"), "data_dir": str(tmp_path / "data")}
    with pytest.raises(ValueError, match="CHECKPOINT_DIR must be a folder of its own"):
        Settings(**folders, checkpoint_dir=folders[store] + "/")
    assert Settings(**folders, checkpoint_dir=str(tmp_path / "checkpoints")).checkpoint_url.endswith("checkpoints")
