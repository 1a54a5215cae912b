"""Faults injected into real processes: workers and job processes SIGKILLed, Redis restarted, the
API killed mid-job and mid-upload, a crash while saving a model, cancellation, the time limit.

These tests break things on purpose, so they run on a private stack (its own Redis with an
append-only file, API and workers), never on the session's `live_service`. The tests of this
module share that stack but none needs another to have run first (each passes alone and in any
order: the `intact` fixture brings a worker and the API back); each one ends by checking that the
dataset and model made first are untouched. JOB_STALE_AFTER_S is 10 s and HEARTBEAT_S 1 s here.

No test asserts how fast something happened; every wait is a hang guard of minutes (HANG_GUARD_S).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from finetune.launcher import http_status
from finetune.stores.jobs import JobStore
from tests.helpers import make_image_bytes
from tests.integration.reliability_support import (
    FINAL,
    Stack,
    assert_baseline_intact,
    expected_history,
    finetune_rows,
    get_job,
    make_baseline,
    predict,
    runner_processes,
    snapshot,
    submit_job,
    tiny_spec,
    tree_diff,
    upload_archive,
    wait_for,
    wait_for_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STALE_AFTER_S = 10
HOURS_AGO = time.time() - 3 * 3600
HANG_GUARD_S = 300  # waits for things that must happen; only a hang would take this long


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults"))
    try:
        stack.start_worker()
        stack.start_api()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(stack):
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def baseline(stack, client, tiny_dataset_zip):
    return make_baseline(
        client, tiny_dataset_zip, data_dir=stack.data_dir, model_dir=stack.model_dir, diagnostics=stack.logs
    )


@pytest.fixture
def intact(stack, client, baseline):
    """One live worker and a live API before the test; the baseline untouched after it."""
    if not stack.live_workers():
        stack.start_worker()
    if stack.api is None or not stack.api.is_alive():
        stack.start_api()
    yield
    assert_baseline_intact(client, baseline)


def jobs_store(stack) -> JobStore:
    return JobStore.from_url(stack.env["REDIS_URL"])


def no_model_of(client: httpx.Client, stack, job_id: str) -> None:
    assert job_id not in [m["job_id"] for m in client.get("/models").json()["data"]]
    for manifest in stack.model_dir.glob("*/manifest.json"):
        assert json.loads(manifest.read_text())["job_id"] != job_id
    # the job process removes its checkpoint just after writing the final status
    checkpoint = stack.model_dir / ".checkpoints" / job_id
    wait_for(lambda: not checkpoint.exists(), timeout=HANG_GUARD_S, interval=0.1, what=f"{checkpoint} removed")


# --- (e) a crash while saving a model ---------------------------------------------------------------


def half_saved_model(stack, baseline, name: str = ".tmp-0badc0ffee000001-x1y2z3") -> Path:
    """A model save killed after writing both files but before the rename into place."""
    source = stack.model_dir / baseline.model["id"]
    manifest = json.loads((source / "manifest.json").read_text())
    staged = stack.model_dir / name
    shutil.copytree(source, staged)
    (staged / "manifest.json").write_text(json.dumps({**manifest, "id": "0badc0ffee000001"}))
    return staged


def test_a_half_saved_model_is_never_listed_or_served(stack, client, baseline, intact):
    source = stack.model_dir / baseline.model["id"]
    manifest = json.loads((source / "manifest.json").read_text())
    staged = half_saved_model(stack, baseline, ".tmp-0badc0ffee000001-listing")
    # a folder holding the model file but no manifest (an object store copy cut short)
    no_manifest = stack.model_dir / "0badc0ffee000002"
    no_manifest.mkdir()
    shutil.copy(source / "model.keras", no_manifest / "model.keras")
    # a folder whose manifest was cut short
    cut = stack.model_dir / "0badc0ffee000003"
    shutil.copytree(source, cut)
    (cut / "manifest.json").write_text(json.dumps({**manifest, "id": "0badc0ffee000003"})[:100])

    listed = [m["id"] for m in client.get("/models").json()["data"]]
    assert baseline.model["id"] in listed
    for model_id in ("0badc0ffee000001", "0badc0ffee000002", "0badc0ffee000003", staged.name):
        assert model_id not in listed
        for path in (f"/models/{model_id}", f"/models/{model_id}/download"):
            response = client.get(path)
            assert response.status_code == 404, (path, response.status_code, response.text[:200])
        response = client.post(
            "/predict", data={"model_id": model_id}, files=[("file", ("a.png", make_image_bytes("red"), "image/png"))]
        )
        assert response.status_code == 404, (model_id, response.text)
        assert client.delete(f"/models/{model_id}").status_code == 404
    default = client.post("/predict", files=[("file", ("a.png", make_image_bytes("red"), "image/png"))])
    assert default.status_code == 200 and default.json()["model_id"] in listed
    assert staged.exists() and no_manifest.exists() and cut.exists()  # nothing deleted by reading
    # the same for a dataset folder whose record was cut short
    cut_dataset = stack.data_dir / "0badc0ffee000005"
    shutil.copytree(stack.data_dir / baseline.dataset["id"], cut_dataset)
    (cut_dataset / "dataset.json").write_text(json.dumps({**baseline.dataset, "id": cut_dataset.name})[:50])
    assert cut_dataset.name not in [d["id"] for d in client.get("/datasets").json()["data"]]
    assert client.get(f"/datasets/{cut_dataset.name}").status_code == 404
    assert client.post("/jobs", json=tiny_spec(cut_dataset.name)).status_code == 404
    for folder in (staged, no_manifest, cut, cut_dataset):
        shutil.rmtree(folder)


# --- (c) Redis restarted --------------------------------------------------------------------------


def test_job_records_survive_a_redis_restart_and_readyz_follows_redis(stack, client, baseline, intact):
    before = client.get("/jobs").json()
    assert before["count"] >= 1
    assert client.get("/readyz").status_code == 200
    stack.stop_redis()
    try:
        wait_for(
            lambda: client.get("/readyz").status_code == 503, timeout=HANG_GUARD_S, what="/readyz 503 with Redis down"
        )
        assert client.get("/readyz").json()["detail"] == "Redis is unreachable"
        assert client.get("/healthz").status_code == 200
        response = client.get(f"/jobs/{baseline.job['id']}")
        assert response.status_code == 503 and "Redis" in response.json()["detail"], response.text
        response = client.post("/jobs", json=tiny_spec(baseline.dataset["id"]))
        assert response.status_code == 503, response.text
        assert client.get("/datasets").status_code == 200  # the stores do not need Redis
        assert client.get(f"/models/{baseline.model['id']}").status_code == 200
    finally:
        stack.start_redis()
    wait_for(
        lambda: client.get("/readyz").status_code == 200, timeout=HANG_GUARD_S, what="/readyz 200 after Redis is back"
    )
    after = client.get("/jobs").json()
    assert after == before
    assert client.get("/metrics").status_code == 200
    # the worker reconnected to the broker: a new job runs
    job = submit_job(client, tiny_spec(baseline.dataset["id"]))
    done = wait_for_job(client, job["id"], diagnostics=stack.logs)
    assert done["status"] == "succeeded", done


# --- (d) the API restarted mid-job, killed mid-upload ----------------------------------------------


def test_a_job_goes_on_while_the_api_is_killed_and_restarted(stack, client, baseline, intact):
    job = submit_job(client, tiny_spec(baseline.dataset["id"], warmup=2, finetune=3))
    wait_for_job(
        client, job["id"], until=lambda j: j["status"] == "running" and j["phase"] is not None, diagnostics=stack.logs
    )
    stack.api.kill()
    assert http_status(f"{stack.url}/healthz") is None
    store = jobs_store(stack)
    seen = store.get(job["id"])
    # the worker keeps reporting while no API runs
    wait_for(lambda: store.get(job["id"]) != seen, timeout=HANG_GUARD_S, what="progress with the API down")
    stack.start_api()
    done = wait_for_job(client, job["id"], diagnostics=stack.logs)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert [(r["phase"], r["epoch"]) for r in done["history"]] == expected_history(2, 3)
    assert done["model_id"] in [m["id"] for m in client.get("/models").json()["data"]]
    predict(client, done["model_id"], baseline.images)


def spooled_bytes(pid: int, spool: Path) -> int:
    """The size of the biggest file process `pid` or one of its children (the API's processes) holds open
    under `spool`. Starlette spools a large multipart part to an anonymous temporary file (no name in the
    folder), seen only through /proc."""
    biggest = 0
    try:
        pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        pids = [pid]
    for owner in pids:
        try:
            fds = os.listdir(f"/proc/{owner}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{owner}/fd/{fd}").startswith(f"{spool}/"):
                    biggest = max(biggest, os.stat(f"/proc/{owner}/fd/{fd}").st_size)
            except OSError:
                continue
    return biggest


def test_an_api_killed_while_an_upload_streams_in_leaves_nothing(stack, client, baseline, intact):
    """The body is still arriving when the API dies: the API had spooled part of it (its temporary file
    is seen growing), and afterwards there is no dataset, no spooled file, no temp file."""
    datasets_before = client.get("/datasets").json()
    data_before = snapshot(stack.data_dir)
    spool = stack.root / "api-tmp"
    spool.mkdir(exist_ok=True)
    stack.api.stop()
    stack.start_api(TMPDIR=str(spool))
    boundary = "b0undary"
    head = (
        f"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {300 * 1024 * 1024}\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    received = 0
    with socket.create_connection(("127.0.0.1", stack.port), timeout=HANG_GUARD_S) as sock:
        sock.sendall(head + b"PK\x03\x04")
        sent = 0
        # a slow client: a chunk at a time until the API's spool holds 4 MB (at most 280 MB are sent)
        while received < 4 * 1024 * 1024 and sent < 280 * 1024 * 1024:
            sock.sendall(os.urandom(256 * 1024))
            sent += 256 * 1024
            received = spooled_bytes(stack.api.pid, spool)
        stack.api.kill()
    assert received >= 4 * 1024 * 1024, f"the API had spooled {received} of {sent} bytes sent"
    assert snapshot(stack.data_dir) == data_before, tree_diff(data_before, snapshot(stack.data_dir))
    assert not list((stack.cache_dir / "uploads").glob(".upload-*"))
    assert not any(spool.iterdir()), list(spool.iterdir())
    stack.start_api()
    assert client.get("/datasets").json() == datasets_before
    assert snapshot(stack.data_dir) == data_before


def big_archive(path: Path, per_class: int = 700) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for colour in ("red", "blue"):
            for n in range(per_class):
                archive.writestr(f"{colour}/{n:04d}.png", make_image_bytes(colour, 48, seed=n))
    return path


def test_an_api_killed_while_it_unpacks_an_upload_leaves_no_dataset_and_start_up_clears_the_rest(
    stack, client, baseline, intact, tmp_path
):
    """Killed after the upload was spooled, while it is unpacked: the staging folder and spooled file
    stay behind, no dataset is listed; the next start-up removes them once they are stale (and never
    the staging folder of a save still in flight)."""
    archive = big_archive(tmp_path / "big.zip")
    datasets_before = client.get("/datasets").json()
    uploads = stack.cache_dir / "uploads"
    failures = []

    def upload():
        try:
            with httpx.Client(base_url=stack.url, timeout=120) as http:
                failures.append(upload_archive(http, "big.zip", archive.read_bytes()).status_code)
        except httpx.HTTPError as error:
            failures.append(type(error).__name__)

    thread = threading.Thread(target=upload)
    thread.start()
    staging = wait_for(
        lambda: list(stack.data_dir.glob(".tmp-*")),
        timeout=HANG_GUARD_S,
        interval=0.005,
        what="the upload's staging folder",
    )
    stack.api.kill()
    thread.join(HANG_GUARD_S)
    assert failures and not isinstance(failures[0], int), f"the upload finished before the kill: {failures}"
    spooled = list(uploads.glob(".upload-*"))
    assert spooled, "the spooled upload should still be there after the kill"
    assert client_datasets_unchanged(stack, datasets_before)
    # make the leftovers (and a model save killed before its rename) look as old as a crash some hours
    # ago; add a model save still in flight
    half_saved = half_saved_model(stack, baseline)
    for leftover in [*staging, *spooled, half_saved]:
        age(leftover, HOURS_AGO)
    in_flight = stack.model_dir / ".tmp-0badc0ffee000009-inflight"
    in_flight.mkdir()
    (in_flight / "model.keras").write_bytes(b"being written")
    half_deleted = stack.data_dir / ".deleting-0badc0ffee000004-abc"
    (half_deleted / "images" / "red").mkdir(parents=True)

    stack.start_api()
    assert not list(stack.data_dir.glob(".tmp-*")), list(stack.data_dir.iterdir())
    assert not half_deleted.exists()
    assert not list(uploads.glob(".upload-*"))
    assert not half_saved.exists()
    assert in_flight.exists(), "a fresh staging folder (a save in flight elsewhere) must be left alone"
    assert "leftover" in stack.api.output()
    assert client.get("/datasets").json() == datasets_before
    shutil.rmtree(in_flight)


def client_datasets_unchanged(stack, before: dict) -> bool:
    listed = {entry.name for entry in stack.data_dir.iterdir() if not entry.name.startswith(".")}
    return listed == {d["id"] for d in before["data"]}


def age(path: Path, when: float) -> None:
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(os.path.join(folder, name), (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)


# --- (f) cancellation -----------------------------------------------------------------------------


def test_cancelling_a_running_job_stops_it_and_frees_the_worker(stack, client, baseline, intact):
    job = submit_job(client, tiny_spec(baseline.dataset["id"], warmup=1, finetune=500))
    running = wait_for_job(
        client,
        job["id"],
        interval=0.05,
        diagnostics=stack.logs,
        until=lambda j: j["phase"] == "finetune" and j["batch"] >= 1 or j["status"] in FINAL,
    )
    assert running["status"] == "running", running
    started = time.monotonic()
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    done = wait_for_job(client, job["id"], interval=0.02, timeout=HANG_GUARD_S)
    stopped_s = time.monotonic() - started
    assert done["status"] == "cancelled", done
    assert finetune_rows(done) < 500
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
    # the worker is free: the next job runs at once
    following = submit_job(client, tiny_spec(baseline.dataset["id"]))
    assert wait_for_job(client, following["id"], diagnostics=stack.logs)["status"] == "succeeded"
    no_model_of(client, stack, job["id"])
    print(f"cancel: stopped {stopped_s:.2f}s after the request (printed, not asserted)")


# --- (a) a worker SIGKILLed mid-job --------------------------------------------------------------------


def test_a_worker_killed_mid_job_is_taken_over_and_the_job_resumes_from_its_checkpoint(stack, client, baseline, intact):
    while len(stack.live_workers()) > 1:
        stack.live_workers()[-1].stop()
    victim = stack.live_workers()[0]
    job = submit_job(client, tiny_spec(baseline.dataset["id"], warmup=2, finetune=8))
    at_kill = wait_for_job(
        client,
        job["id"],
        interval=0.05,
        diagnostics=stack.logs,
        until=lambda j: finetune_rows(j) >= 1 or j["status"] in FINAL,
    )
    assert at_kill["status"] == "running", at_kill
    assert runner_processes(victim, job["id"]), "the job should run in a child of the victim"
    victim.kill()
    killed = time.monotonic()
    checkpoint = json.loads((stack.model_dir / ".checkpoints" / job["id"] / "state.json").read_text())
    saved_rows = len(checkpoint["history"])
    assert saved_rows >= len(at_kill["history"])
    assert get_job(client, job["id"])["status"] == "running"  # nobody has noticed yet

    stack.start_worker()
    resumed = wait_for_job(
        client, job["id"], until=lambda j: j["attempts"] >= 2, timeout=HANG_GUARD_S, diagnostics=stack.logs
    )
    taken_over_s = time.monotonic() - killed
    done = wait_for_job(client, job["id"], diagnostics=stack.logs)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert [(r["phase"], r["epoch"]) for r in done["history"]] == expected_history(2, 8)
    # resumed, not restarted: the rows recorded before the kill are the very same rows
    assert done["history"][:saved_rows] == checkpoint["history"]
    assert done["history"][: len(at_kill["history"])] == at_kill["history"]
    # the API and every worker sweep for stale jobs; whichever held the lock re-queued it
    assert any("re-queued to resume" in process.output() for process in [*stack.apis, *stack.workers])
    assert done["model_id"] in [m["id"] for m in client.get("/models").json()["data"]]
    wait_for(
        lambda: not (stack.model_dir / ".checkpoints" / job["id"]).exists(),
        timeout=HANG_GUARD_S,
        what="the checkpoint removed",
    )
    assert resumed["status"] in ("running", "succeeded")
    print(
        f"worker kill: job taken over {taken_over_s:.1f}s after the kill (not asserted), resumed after {saved_rows} epochs"
    )


def test_a_job_cancelled_while_its_worker_is_dead_ends_cancelled_without_leftovers(stack, client, baseline, intact):
    """Killed mid-job, then cancelled while no worker lives: the next worker's reaper hands it back and
    it ends cancelled, its checkpoint removed, no model."""
    while len(stack.live_workers()) > 1:
        stack.live_workers()[-1].stop()
    victim = stack.live_workers()[0]
    job = submit_job(client, tiny_spec(baseline.dataset["id"], warmup=1, finetune=500))
    wait_for_job(
        client,
        job["id"],
        interval=0.05,
        diagnostics=stack.logs,
        until=lambda j: finetune_rows(j) >= 1 or j["status"] in FINAL,
    )
    victim.kill()
    assert (stack.model_dir / ".checkpoints" / job["id"] / "state.json").exists()
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "running"  # flagged; nobody to stop
    stack.start_worker()
    done = wait_for_job(client, job["id"], timeout=HANG_GUARD_S, diagnostics=stack.logs)
    assert done["status"] == "cancelled", done
    no_model_of(client, stack, job["id"])


# --- (b) a job that keeps crashing -------------------------------------------------------------------


def test_a_job_whose_process_keeps_dying_ends_failed_after_max_attempts(stack, client, baseline, intact):
    while len(stack.live_workers()) > 1:
        stack.live_workers()[-1].stop()
    worker = stack.live_workers()[0]
    job = submit_job(client, tiny_spec(baseline.dataset["id"], warmup=1, finetune=500))
    max_attempts = 3
    for attempt in range(1, max_attempts + 1):
        wait_for_job(
            client,
            job["id"],
            until=lambda j, a=attempt: j["attempts"] == a,
            timeout=HANG_GUARD_S,
            interval=0.05,
            diagnostics=stack.logs,
        )
        children = wait_for(
            lambda: runner_processes(worker, job["id"]),
            timeout=HANG_GUARD_S,
            interval=0.05,
            what=f"the job process of attempt {attempt}",
        )
        for child in children:
            child.kill()
    done = wait_for_job(client, job["id"], timeout=HANG_GUARD_S, diagnostics=stack.logs)
    assert done["status"] == "failed", done
    assert done["attempts"] == max_attempts
    assert done["error"]["type"] == "WorkerLost"
    assert f"{max_attempts} times" in done["error"]["message"]
    assert worker.is_alive(), "the worker survives its job process dying"
    no_model_of(client, stack, job["id"])
    assert not (stack.cache_dir / "decoded" / job["id"]).exists()
    # the worker itself ran the crashed job process again, without waiting for a reaper's sweep: its
    # task loop logged each rerun. (A sweep may also re-queue the job in the moment between the
    # worker releasing the dead process's heartbeat and the next process beating; that duplicate
    # delivery finds the job owned or final and does nothing, so it is not asserted either way.)
    reruns = [line for line in worker.output().splitlines() if f"job {job['id']} process exited" in line]
    assert len(reruns) == max_attempts, "\n".join(reruns)
    assert all("running it again" in line for line in reruns), "\n".join(reruns)
    following = submit_job(client, tiny_spec(baseline.dataset["id"]))
    assert wait_for_job(client, following["id"], diagnostics=stack.logs)["status"] == "succeeded"


# --- (g) the time limit --------------------------------------------------------------------------------


def test_a_job_past_its_time_limit_ends_failed_saying_so(stack, client, baseline, intact):
    for worker in stack.live_workers():
        worker.stop()
    stack.start_worker(JOB_TIME_LIMIT_S="20")
    try:
        job = submit_job(client, tiny_spec(baseline.dataset["id"], warmup=1, finetune=500))
        done = wait_for_job(client, job["id"], timeout=HANG_GUARD_S, diagnostics=stack.logs)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "JobTimedOut"
        assert "time limit" in done["error"]["message"] and "20 s" in done["error"]["message"]
        ran_s = (datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])).seconds
        assert ran_s >= 20, ran_s  # it ran until its limit (how soon after it stopped is not asserted)
        no_model_of(client, stack, job["id"])
    finally:
        for worker in stack.live_workers():
            worker.stop()
        stack.start_worker()
