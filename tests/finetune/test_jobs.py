"""Job records in a real Redis (one the tests started), and the progress/ETA arithmetic."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

from finetune.errors import BrokerUnavailable, Conflict, NotFound
from finetune.launcher import free_port
from finetune.ml.spec import JobSpec
from finetune.stores.jobs import INDEX_KEY, JobStore, eta_seconds, job_key, overall_progress

# The session's Redis is shared with the integration tests; these tests keep to a database of their
# own (`redis_db`), so clearing it between tests touches only keys they wrote.


def spec(dataset_id: str = "ds1", **fields) -> JobSpec:
    return JobSpec(
        dataset_id=dataset_id,
        backbone="mobilenet",
        alpha=0.25,
        weights="none",
        image_size=32,
        warmup={"epochs": 2},
        finetune=None,
        **fields,
    )


# --- records ---------------------------------------------------------------------------------


def test_create_stores_a_queued_record(jobs):
    record = jobs.create(spec())
    assert record["status"] == "queued"
    assert record["dataset_id"] == "ds1"
    assert record["spec"]["dataset_id"] == "ds1" and record["spec"]["warmup"]["epochs"] == 2
    assert record["progress"] == 0.0 and record["history"] == [] and record["error"] is None
    assert record["started_at"] is None and record["finished_at"] is None
    assert jobs.get(record["id"]) == record
    assert jobs.redis.hget(job_key(record["id"]), "status") == "queued"
    assert jobs.redis.zscore(INDEX_KEY, record["id"]) is not None
    assert jobs.cancel_requested(record["id"]) is False


def test_get_unknown_or_path_like_ids_is_not_found(jobs):
    for job_id in ("0123456789abcdef", "../x", "a/b", ""):
        with pytest.raises(NotFound) as caught:
            jobs.get(job_id)
        assert caught.value.status_code == 404


def test_list_is_newest_first(jobs):
    ids = [jobs.create(spec())["id"] for _ in range(4)]
    assert [record["id"] for record in jobs.list()] == ids[::-1]
    assert [record["id"] for record in jobs.list(limit=2)] == ids[:1:-1]


def test_list_filters_by_status(jobs):
    queued, running, done = (jobs.create(spec())["id"] for _ in range(3))
    jobs.update(running, {"status": "running"})
    jobs.update(done, {"status": "succeeded"})
    assert [r["id"] for r in jobs.list(status="queued")] == [queued]
    assert [r["id"] for r in jobs.list(status="running")] == [running]
    assert [r["id"] for r in jobs.list(status="succeeded")] == [done]
    assert jobs.list(status="failed") == []
    assert jobs.counts_by_status() == {"queued": 1, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0}


def test_update_applies_a_patch_and_keeps_the_rest(jobs):
    record = jobs.create(spec())
    updated = jobs.update(record["id"], {"status": "running", "phase": "warmup", "epoch": 1})
    assert (updated["status"], updated["phase"], updated["epoch"]) == ("running", "warmup", 1)
    assert updated["spec"] == record["spec"] and updated["created_at"] == record["created_at"]
    assert jobs.get(record["id"]) == updated
    assert jobs.redis.hget(job_key(record["id"]), "status") == "running"


def test_update_with_allowed_from_refuses_another_status(jobs):
    job_id = jobs.create(spec())["id"]
    jobs.update(job_id, {"status": "running"}, allowed_from=frozenset({"queued"}))
    with pytest.raises(Conflict) as caught:
        jobs.update(job_id, {"status": "running", "epoch": 9}, allowed_from=frozenset({"queued"}))
    assert caught.value.status_code == 409
    assert "running" in caught.value.message
    assert jobs.get(job_id)["epoch"] == 0  # the refused patch was not applied


def test_update_unknown_job_is_not_found(jobs):
    with pytest.raises(NotFound):
        jobs.update("0123456789abcdef", {"status": "running"})
    assert jobs.redis.exists(job_key("0123456789abcdef")) == 0


def test_cancel_of_a_queued_job_is_immediate(jobs):
    job_id = jobs.create(spec())["id"]
    record = jobs.request_cancel(job_id)
    assert record["status"] == "cancelled"
    assert record["finished_at"] is not None
    assert jobs.get(job_id)["status"] == "cancelled"
    assert jobs.cancel_requested(job_id) is True


def test_cancel_of_a_running_job_sets_the_flag_and_leaves_the_status(jobs):
    job_id = jobs.create(spec())["id"]
    jobs.update(job_id, {"status": "running", "phase": "warmup"})
    record = jobs.request_cancel(job_id)
    assert record["status"] == "running"
    assert record["finished_at"] is None
    assert jobs.cancel_requested(job_id) is True
    assert jobs.get(job_id)["status"] == "running"


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_cancel_of_a_finished_job_is_a_conflict(jobs, final):
    job_id = jobs.create(spec())["id"]
    jobs.update(job_id, {"status": final})
    with pytest.raises(Conflict, match=final):
        jobs.request_cancel(job_id)
    assert jobs.get(job_id)["status"] == final
    assert jobs.cancel_requested(job_id) is False


def test_cancel_of_an_unknown_job_is_not_found(jobs):
    with pytest.raises(NotFound):
        jobs.request_cancel("0123456789abcdef")
    with pytest.raises(NotFound):
        jobs.request_cancel("../x")


def test_a_cancel_racing_a_start_has_exactly_one_winner(jobs):
    for _ in range(10):
        job_id = jobs.create(spec())["id"]
        outcome = {}
        barrier = threading.Barrier(2)

        def start(job_id=job_id, outcome=outcome, barrier=barrier):
            barrier.wait()
            try:
                jobs.update(job_id, {"status": "running"}, allowed_from=frozenset({"queued"}))
                outcome["start"] = "won"
            except Conflict:
                outcome["start"] = "lost"

        def cancel(job_id=job_id, outcome=outcome, barrier=barrier):
            barrier.wait()
            outcome["cancel"] = jobs.request_cancel(job_id)["status"]

        threads = [threading.Thread(target=start), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)  # a hang guard
        status = jobs.get(job_id)["status"]
        if outcome["start"] == "won":
            assert status == "running"
            assert jobs.cancel_requested(job_id)  # the worker will still see the flag
        else:
            assert status == "cancelled" and outcome["cancel"] == "cancelled"


def test_heartbeat_is_recorded(jobs):
    job_id = jobs.create(spec())["id"]
    assert jobs.last_heartbeat(job_id) is None
    jobs.heartbeat(job_id, "worker-1")
    assert jobs.last_heartbeat(job_id) == pytest.approx(datetime.now().timestamp(), abs=5)


def test_jobs_on_dataset_lists_only_active_jobs_of_that_dataset(jobs):
    active = jobs.create(spec("ds1"))["id"]
    finished = jobs.create(spec("ds1"))["id"]
    jobs.update(finished, {"status": "failed"})
    jobs.create(spec("ds2"))
    assert [r["id"] for r in jobs.jobs_on_dataset("ds1")] == [active]


def test_delete_removes_the_record_and_its_index_entry(jobs):
    job_id = jobs.create(spec())["id"]
    jobs.delete(job_id)
    with pytest.raises(NotFound):
        jobs.get(job_id)
    assert jobs.list() == []


def test_an_unreachable_redis_is_broker_unavailable():
    store = JobStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    assert store.ping() is False
    with pytest.raises(BrokerUnavailable) as caught:
        store.create(spec())
    assert caught.value.status_code == 503
    assert "Redis" in caught.value.message
    for call in (
        lambda: store.get("abc"),
        lambda: store.list(),
        lambda: store.update("abc", {}),
        lambda: store.request_cancel("abc"),
    ):
        with pytest.raises(BrokerUnavailable):
            call()


def test_broker_unavailable_is_not_a_redis_error():
    # the API maps domain errors to HTTP statuses; a raw redis error would be a 500
    assert not issubclass(BrokerUnavailable, redis.RedisError)


# --- progress and ETA ----------------------------------------------------------------------

SPEC_2_3 = {"warmup": {"epochs": 2}, "finetune": {"epochs": 3}}


def rows(n: int) -> list[dict]:
    return [{"epoch": i + 1} for i in range(n)]


@pytest.mark.parametrize(
    ("history", "phase", "batch", "batches", "expected"),
    [
        (0, None, 0, 0, 0.0),
        (0, "loading", 0, 0, 0.0),
        (0, "warmup", 5, 10, 0.1),
        (1, "warmup", 0, 10, 0.2),
        (2, "finetune", 5, 10, 0.5),
        (2, "finetune", 10, 10, 0.6),  # an epoch's last batch counts it whole, before its history row arrives
        (3, "finetune", 0, 10, 0.6),  # ... and at its end, with its row, the same: never a step back
        (4, "evaluating", 3, 10, 0.8),  # batches outside a training phase count nothing
        (5, "saving", 0, 0, 1.0),
        (7, "finetune", 1, 2, 1.0),  # never above 1
    ],
)
def test_overall_progress_counts_epochs_of_both_phases(history, phase, batch, batches, expected):
    assert overall_progress(SPEC_2_3, rows(history), phase, batch, batches) == pytest.approx(expected)


def test_overall_progress_without_finetune_counts_warmup_only():
    spec = {"warmup": {"epochs": 4}, "finetune": None}
    assert overall_progress(spec, rows(1), "warmup", 1, 2) == pytest.approx(1.5 / 4)


def test_overall_progress_of_zero_epochs_is_zero():
    assert overall_progress({"warmup": {"epochs": 0}, "finetune": {"epochs": 0}}, [], "warmup", 0, 0) == 0.0


def test_overall_progress_from_a_real_spec_dump():
    dumped = spec().model_dump()
    assert overall_progress(dumped, rows(1), "warmup", 0, 4) == pytest.approx(0.5)


def test_eta_is_elapsed_times_remaining_over_done():
    started = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    now = (started + timedelta(seconds=10)).timestamp()
    assert eta_seconds(started.isoformat(), 0.25, now=now) == pytest.approx(30.0)
    assert eta_seconds(started.isoformat(), 0.5, now=now) == pytest.approx(10.0)
    assert eta_seconds(started.isoformat(), 1.0, now=now) == 0.0


def test_eta_is_unknown_before_start_or_progress():
    assert eta_seconds(None, 0.5) is None
    assert eta_seconds(datetime.now(UTC).isoformat(), 0.0) is None


def test_eta_is_never_negative():
    started = datetime.now(UTC) + timedelta(seconds=60)  # a clock skewed into the future
    assert eta_seconds(started.isoformat(), 0.5) == 0.0


def test_the_reporters_progress_never_steps_back_across_an_epochs_end(jobs):
    from finetune.execution.runner import ProgressReporter
    from finetune.ml.training.callbacks import ProgressEvent
    from finetune.states import JobStatus

    record = jobs.create(spec())  # 2 warmup epochs, no finetune
    record = jobs.update(record["id"], {"status": JobStatus.RUNNING, "started_at": "2026-01-01T00:00:00+00:00"})
    reporter = ProgressReporter(jobs, record)
    seen = []
    for epoch in (1, 2):
        for batch in (0, 1, 2):  # the first batch of an epoch is always reported, the rest only when due
            reporter.last_batch_report = 0.0
            reporter(ProgressEvent("warmup", epoch, 2, batch, 2))
            seen.append(jobs.get(record["id"])["progress"])
        history = [{"epoch": n} for n in range(1, epoch + 1)]
        reporter(ProgressEvent("warmup", epoch, 2, 2, 2, metrics={"loss": 1.0}, history=history))
        seen.append(jobs.get(record["id"])["progress"])
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.5, 0.5, 0.75, 1.0, 1.0])
