"""The Python client (finetune/client.py) and `finetune remote` against the real processes: the shared
live API, worker and Redis, and a second API with API keys on the same stores. The client uploads a
folder it zips itself, starts a tiny job, follows its server-sent events to the end and predicts with
the model; the API's errors arrive as exceptions carrying the status and the detail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from finetune.client import ApiError, Client, Invalid, JobFailed, NotFound, Unauthorized
from finetune.states import JobStatus
from tests.helpers import make_dataset_zip, make_image, make_image_bytes
from tests.integration.reliability_support import tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("red", "blue")
HANG_GUARD_S = 600
KEY = "client-test-3c9e1f7a5b2d4e6f-SECRET"
STATUS_ORDER = [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]


class ProgressLog:
    """Records every (sent, total) an upload reports."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, sent: int, total: int) -> None:
        self.calls.append((sent, total))

    def assert_grew_to_the_total(self, total: int | None = None) -> None:
        sent = [call[0] for call in self.calls]
        totals = {call[1] for call in self.calls}
        assert len(self.calls) >= 2, self.calls  # the archives here span several 64 KiB chunks
        assert all(a < b for a, b in zip(sent, sent[1:])), sent
        assert len(totals) == 1 and sent[-1] == totals.pop(), self.calls
        if total is not None:
            assert sent[-1] == total


@pytest.fixture(scope="module")
def api(live_service):
    with Client(live_service.url) as client:
        yield client


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """`<class>/<image>.png`, 12 noisy 64-px images a class: ~150 KB zipped, several upload chunks."""
    root = tmp_path_factory.mktemp("client-images") / "colours"
    for index, colour in enumerate(CLASSES):
        (root / colour).mkdir(parents=True)
        for n in range(12):
            make_image(colour, 64, seed=index * 1000 + n).save(root / colour / f"{colour}_{n:02d}.png")
    return root


@pytest.fixture(scope="module")
def uploaded(api, image_folder):
    progress = ProgressLog()
    dataset = api.upload_dataset(image_folder, progress=progress)
    return dataset, progress


@pytest.fixture(scope="module")
def watched(api, uploaded):
    """A tiny job on the uploaded folder, followed through its events to the end."""
    dataset, _ = uploaded
    job = api.create_job(dataset.id, tiny_spec(dataset.id, warmup=2))
    events = list(api.watch(job.id, timeout=HANG_GUARD_S))
    return job, events


def test_a_folder_is_zipped_and_uploaded_with_progress(api, uploaded):
    dataset, progress = uploaded
    assert sorted(dataset.classes) == sorted(CLASSES)
    assert dataset.counts == {colour: 12 for colour in CLASSES} and dataset.num_images == 24
    assert dataset.skipped == []
    assert dataset.name == "colours"  # the folder's name
    assert api.dataset(dataset.id) == dataset
    assert dataset.id in [d.id for d in api.datasets()]
    progress.assert_grew_to_the_total()


def test_an_archive_uploads_with_progress_to_its_size(api, tmp_path):
    archive = make_dataset_zip(tmp_path / "archive.zip", per_class=10, size=64)
    progress = ProgressLog()
    dataset = api.upload_dataset(archive, name="from-archive", progress=progress)
    assert dataset.name == "from-archive" and dataset.num_images == 20
    progress.assert_grew_to_the_total(archive.stat().st_size)


def test_watch_follows_the_job_to_its_final_state(api, watched):
    job, events = watched
    assert job.status == JobStatus.QUEUED
    assert all(event.id == job.id for event in events)
    statuses = [event.status for event in events]
    assert statuses[-1] == JobStatus.SUCCEEDED, events[-1]
    assert JobStatus.RUNNING in statuses  # the job process loads TensorFlow for seconds: seen running
    assert [STATUS_ORDER.index(s) for s in statuses] == sorted(STATUS_ORDER.index(s) for s in statuses)
    assert all(a != b for a, b in zip(events, events[1:]))  # one event per change
    assert events[-1].progress == 1.0
    final = api.job(job.id)
    assert final.status == JobStatus.SUCCEEDED and final.model_id == events[-1].model_id
    assert len(final.history) == 2  # the two warmup epochs
    # a finished job's stream is its final state alone, and wait returns it
    assert [event.status for event in api.watch(job.id)] == [JobStatus.SUCCEEDED]
    assert api.wait(job.id, timeout=HANG_GUARD_S).model_id == final.model_id
    assert job.id in [j.id for j in api.jobs(status="succeeded")]


def test_predict_with_the_trained_model(api, watched, image_folder):
    job, events = watched
    model_id = events[-1].model_id
    model = api.model(model_id)
    assert model.job_id == job.id and sorted(model.classes) == sorted(CLASSES)
    assert model_id in [m.id for m in api.models()]
    answer = api.predict(
        [image_folder / "red" / "red_00.png", ("probe.png", make_image_bytes("blue", 64, seed=99))],
        model=model_id,
        top_k=1,
    )
    assert answer.model_id == model_id
    assert [r.filename for r in answer.results] == ["red_00.png", "probe.png"]
    for result in answer.results:
        assert len(result.predictions) == 1 and result.predictions[0].label in CLASSES
        assert result.label == result.predictions[0].label and not result.abstained


def test_errors_carry_the_status_and_the_detail(api, uploaded):
    dataset, _ = uploaded
    with pytest.raises(NotFound) as missing:
        api.job("no-such-job")
    assert isinstance(missing.value, ApiError)
    assert missing.value.status_code == 404 and missing.value.detail == "job 'no-such-job' not found"
    with pytest.raises(NotFound) as no_events:
        next(api.watch("no-such-job"))
    assert no_events.value.status_code == 404
    with pytest.raises(NotFound):
        api.create_job("no-such-dataset", tiny_spec("no-such-dataset"))
    with pytest.raises(Invalid) as invalid:
        api.create_job(dataset.id, tiny_spec(dataset.id), warmup={"epochs": -1})
    assert invalid.value.status_code == 422
    assert any("epochs" in str(item.get("loc")) for item in invalid.value.detail), invalid.value.detail
    with pytest.raises(NotFound):
        api.alias("no-such-alias")
    with pytest.raises(FileNotFoundError):
        api.upload_dataset("/no/such/folder")


@pytest.fixture(scope="module")
def quiet_api(live_service, redis_db, tmp_path_factory, tiny_dataset_zip):
    """A second API (its httpx client, `.process` its process) on the live service's stores but a Redis
    database where no worker listens: its jobs stay queued, their event streams quiet but for the keep-alive."""
    redis.Redis.from_url(redis_db).flushdb()
    with live_service.extra_api(tmp_path_factory.mktemp("client-quiet-api"), REDIS_URL=redis_db) as http:
        yield http
    redis.Redis.from_url(redis_db).flushdb()


def test_watch_reopens_a_quiet_stream_and_gives_up_at_its_timeout(quiet_api, tiny_dataset_zip):
    """A read timeout far below the server's 15 s keep-alive: the stream is opened again and again until
    the deadline; the job, unchanged, is yielded once."""
    with Client(str(quiet_api.base_url), events_read_timeout=0.5) as api:
        dataset = api.upload_dataset(tiny_dataset_zip)
        job = api.create_job(dataset.id, tiny_spec(dataset.id))
        seen = []
        with pytest.raises(TimeoutError, match=job.id):
            for state in api.watch(job.id, timeout=3):
                seen.append(state)
        assert [state.status for state in seen] == [JobStatus.QUEUED]
        assert quiet_api.process.output().count(f"GET /jobs/{job.id}/events") >= 2  # the stream was reopened
        with pytest.raises(TimeoutError):
            api.wait(job.id, timeout=1)
        assert api.job(job.id).status == JobStatus.QUEUED


def test_wait_raises_job_failed_on_a_cancelled_job(api, uploaded):
    dataset, _ = uploaded
    job = api.create_job(dataset.id, tiny_spec(dataset.id, warmup=50))
    cancelled = api.cancel_job(job.id)
    assert cancelled.id == job.id
    with pytest.raises(JobFailed) as failed:
        api.wait(job.id, timeout=HANG_GUARD_S)
    assert failed.value.job.id == job.id and failed.value.job.status == JobStatus.CANCELLED


def test_an_api_key_is_required_by_a_keyed_api(live_service, uploaded, tmp_path_factory):
    dataset, _ = uploaded
    with live_service.extra_api(tmp_path_factory.mktemp("client-keyed-api"), API_KEYS=KEY) as keyed:
        url = str(keyed.base_url)
        with Client(url) as anonymous:
            with pytest.raises(Unauthorized) as refused:
                anonymous.datasets()
            assert refused.value.status_code == 401 and "API key" in refused.value.detail
            with pytest.raises(Unauthorized):  # refused before the body is read
                anonymous.upload_dataset(make_dataset_zip(tmp_path_factory.mktemp("keyed") / "d.zip"))
        with Client(url, api_key="wrong-" + KEY) as wrong, pytest.raises(Unauthorized):
            wrong.dataset(dataset.id)
        with Client(url, api_key=KEY) as keyed_client:
            assert keyed_client.dataset(dataset.id) == dataset
            assert dataset.id in [d.id for d in keyed_client.datasets()]
            completed = remote("--url", url, "datasets", "get", dataset.id, env_key=KEY)
            assert completed.returncode == 0, completed.stderr[-2000:]
            assert json.loads(completed.stdout)["id"] == dataset.id
            completed = remote("--url", url, "datasets", "get", dataset.id)
            assert completed.returncode == 1 and "HTTP 401" in completed.stderr


def remote(*args: str, url: str | None = None, env_key: str | None = None) -> subprocess.CompletedProcess:
    """`finetune remote ...` in a process of its own; the URL and key through the environment when given."""
    env = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_URL", "FINETUNE_API_KEY")}
    if url:
        env["FINETUNE_URL"] = url
    if env_key:
        env["FINETUNE_API_KEY"] = env_key
    return subprocess.run(
        [sys.executable, "-m", "finetune.cli", "remote", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=HANG_GUARD_S,
    )


def test_finetune_remote_drives_the_live_api(live_service, watched, image_folder, tmp_path):
    _, events = watched
    model_id = events[-1].model_id
    url = live_service.url

    uploaded = remote("datasets", "upload", str(image_folder), "--name", "via-cli", url=url)
    assert uploaded.returncode == 0, uploaded.stderr[-2000:]
    dataset = json.loads(uploaded.stdout)
    assert dataset["name"] == "via-cli" and dataset["num_images"] == 24

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({k: v for k, v in tiny_spec(dataset["id"]).items() if k != "dataset_id"}))
    created = remote("jobs", "create", dataset["id"], "--spec", str(spec), "--set", "warmup.epochs=2", url=url)
    assert created.returncode == 0, created.stderr[-2000:]
    job = json.loads(created.stdout)
    assert job["status"] == "queued" and job["spec"]["warmup"]["epochs"] == 2
    watched_lines = remote("jobs", "watch", job["id"], "--timeout", str(HANG_GUARD_S), url=url)
    assert watched_lines.returncode == 0, watched_lines.stderr[-2000:]
    states = [json.loads(line) for line in watched_lines.stdout.splitlines()]
    assert states and all(state["id"] == job["id"] for state in states)
    assert states[-1]["status"] == "succeeded", states[-1]
    waited = remote("jobs", "wait", job["id"], url=url)
    assert waited.returncode == 0 and json.loads(waited.stdout)["model_id"] == states[-1]["model_id"]

    predicted = remote(
        "predict", str(image_folder / "blue" / "blue_03.png"), "--model", model_id, "--top-k", "2", url=url
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    answer = json.loads(predicted.stdout)
    assert answer["model_id"] == model_id
    assert [p["label"] for p in answer["results"][0]["predictions"]] in (["red", "blue"], ["blue", "red"])

    listed = remote("models", "list", url=url)
    assert listed.returncode == 0 and model_id in [m["id"] for m in json.loads(listed.stdout)]

    alias = remote("aliases", "set", "client-cli", model_id, url=url)
    assert alias.returncode == 0, alias.stderr[-2000:]
    assert json.loads(alias.stdout)["model_id"] == model_id
    assert remote("aliases", "delete", "client-cli", url=url).returncode == 0
    gone = remote("aliases", "get", "client-cli", url=url)
    assert gone.returncode == 1 and "HTTP 404" in gone.stderr and "Traceback" not in gone.stderr

    missing = remote("jobs", "get", "no-such-job", url=url)
    assert missing.returncode == 1 and "HTTP 404: job 'no-such-job' not found" in missing.stderr
    assert remote("models", "list").returncode == 2  # neither --url nor FINETUNE_URL
