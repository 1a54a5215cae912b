"""The service end to end over real HTTP: this session's Redis, a real Celery worker (one child process
per job) and the real uvicorn API, driven with httpx.

Flow: upload the tiny dataset -> a 2+2-epoch MobileNet job -> watch it by polling and by server-sent
events -> its model is listed, described, downloadable and answers /predict. Then a job that fails,
a job cancelled while it runs (after which the worker takes the next job), and the 4xx answers.
Timings are printed (run with -s) for the lead to quote; they are not asserted.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers import make_dataset_zip, make_image_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB_TIMEOUT_S = 420.0  # a tiny job on CPU, including the job process's TensorFlow start-up
POLL_S = 0.05
FINAL = ("succeeded", "failed", "cancelled")
TINY_SPEC = {  # augmentation left out: the default (the seed's) augmentation
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "none",
    "image_size": 32,
    "batch_size": 8,
    "warmup": {"epochs": 2},
    "finetune": {"epochs": 2},
}
LONG_SPEC = {**TINY_SPEC, "image_size": 96, "warmup": {"epochs": 200}, "finetune": {"epochs": 200}}


# --- helpers ------------------------------------------------------------------------------------


def worker_logs(live_service) -> str:
    return "\n".join(f"--- {process.log_path}\n{process.log_tail(60)}" for process in live_service.workers)


def upload_dataset(http: httpx.Client, path: Path) -> dict:
    with open(path, "rb") as handle:
        response = http.post("/datasets", files={"file": (path.name, handle, "application/zip")})
    assert response.status_code == 201, response.text
    return response.json()


def submit(http: httpx.Client, dataset_id: str, spec: dict) -> dict:
    response = http.post("/jobs", json={"dataset_id": dataset_id, **spec})
    assert response.status_code == 202, response.text
    assert response.headers["location"].endswith(f"/jobs/{response.json()['id']}")
    return response.json()


def poll(http, live_service, job_id: str, until, *, timeout: float = JOB_TIMEOUT_S) -> list[dict]:
    """GET /jobs/{id} every POLL_S until `until(job)` holds; returns every answer seen."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if until(seen[-1]):
            return seen
        assert time.monotonic() < deadline, (
            f"job {job_id} still {seen[-1]['status']} ({seen[-1]['phase']}) after {timeout:.0f}s\n"
            f"{worker_logs(live_service)}"
        )
        time.sleep(POLL_S)


def until_final(job: dict) -> bool:
    return job["status"] in FINAL


def read_events(response: httpx.Response) -> list[dict]:
    """The `data:` payloads of a server-sent event stream, read until the server ends it."""
    events, data = [], []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and data:
            events.append(json.loads("\n".join(data)))
            data = []
    if data:
        events.append(json.loads("\n".join(data)))
    return events


class EventListener(threading.Thread):
    """Follows GET /jobs/{id}/events in the background."""

    def __init__(self, base_url: str, job_id: str):
        super().__init__(daemon=True, name=f"sse-{job_id}")
        self.base_url, self.job_id = base_url, job_id
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self.ended = False

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(10.0, read=60.0)) as client:
                with client.stream("GET", f"/jobs/{self.job_id}/events") as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/event-stream")
                    self.events = read_events(response)
            self.ended = True
        except BaseException as error:  # reported by the test
            self.error = error


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def model_ids_of_job(http: httpx.Client, job_id: str) -> list[str]:
    return [model["id"] for model in http.get("/models").json()["data"] if model["job_id"] == job_id]


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(live_service):
    with httpx.Client(base_url=live_service.url, timeout=120.0) as client:
        yield client


@dataclass
class TinyRun:
    dataset: dict
    job_id: str
    polled: list[dict]
    listener: EventListener
    seconds: float
    final: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def tiny_run(http, live_service, tiny_dataset_zip) -> TinyRun:
    """Uploads the tiny dataset and runs the tiny job to its end, watching it both ways."""
    dataset = upload_dataset(http, tiny_dataset_zip)
    started = time.perf_counter()
    job = submit(http, dataset["id"], TINY_SPEC)
    post_seconds = time.perf_counter() - started
    assert job["status"] == "queued"
    listener = EventListener(live_service.url, job["id"])
    listener.start()
    polled = poll(http, live_service, job["id"], until_final)
    seconds = time.perf_counter() - started
    listener.join(timeout=120)  # a hang guard: the stream ends with the job
    final = polled[-1]
    print(
        f"\n[e2e] tiny job (mobilenet a=0.25, 32 px, 12 train images, batch 8, 2+2 epochs, augmentation on): "
        f"{seconds:.1f} s from sending POST /jobs to polling `succeeded` (POST /jobs itself {post_seconds:.2f} s; "
        f"created_at->started_at {timestamp(final['started_at']) - timestamp(final['created_at']):.1f} s; "
        f"started_at->finished_at {timestamp(final['finished_at']) - timestamp(final['started_at']):.1f} s)"
    )
    return TinyRun(dataset=dataset, job_id=job["id"], polled=polled, listener=listener, seconds=seconds, final=final)


def timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


@pytest.fixture(scope="module")
def tiny_model(http, tiny_run) -> dict:
    assert tiny_run.final["status"] == "succeeded", tiny_run.final
    response = http.get(f"/models/{tiny_run.final['model_id']}")
    assert response.status_code == 200, response.text
    return response.json()


# --- the tiny job, end to end -------------------------------------------------------------------


def test_tiny_job_succeeds(tiny_run, live_service):
    final = tiny_run.final
    assert final["status"] == "succeeded", f"{final}\n{worker_logs(live_service)}"
    assert final["model_id"]
    assert final["error"] is None
    assert final["progress"] == 1.0
    assert final["eta_seconds"] is None
    assert final["created_at"] <= final["started_at"] <= final["finished_at"]
    assert final["dataset_id"] == tiny_run.dataset["id"]
    assert [(row["phase"], row["epoch"]) for row in final["history"]] == [
        ("warmup", 1),
        ("warmup", 2),
        ("finetune", 1),
        ("finetune", 2),
    ]
    for row in final["history"]:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(row), row
    assert final["metrics"] == final["history"][-1]


def test_progress_rises_through_both_phases(tiny_run):
    polled = tiny_run.polled
    statuses = [job["status"] for job in polled]
    assert "running" in statuses, statuses[:5]
    assert statuses.index("running") < statuses.index("succeeded")
    progress = [job["progress"] for job in polled]
    assert all(a <= b for a, b in zip(progress, progress[1:])), progress
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert any(0.0 < p < 1.0 for p in progress), "no intermediate progress was seen"

    phases = [job["phase"] for job in polled if job["status"] == "running"]
    assert "warmup" in phases and "finetune" in phases, sorted(set(filter(None, phases)))
    assert phases.index("warmup") < phases.index("finetune")
    assert "warmup" not in phases[phases.index("finetune") :]

    training = [job for job in polled if job["status"] == "running" and job["phase"] in ("warmup", "finetune")]
    for job in polled:
        assert {"phase", "epoch", "epochs", "batch", "batches", "progress", "eta_seconds", "metrics", "history"} <= set(
            job
        )
    assert all(job["epochs"] == 2 and job["batches"] == 2 for job in training if job["batches"]), training
    assert any(job["batches"] > 0 for job in training)
    assert any(job["eta_seconds"] is not None for job in training)
    assert any(job["metrics"] is not None for job in training)


def test_events_follow_the_running_job_to_its_end(tiny_run):
    listener = tiny_run.listener
    assert listener.error is None, repr(listener.error)
    assert listener.ended and not listener.is_alive(), "the event stream did not end at the final state"
    events = listener.events
    assert len(events) >= 3, [event["status"] for event in events]
    assert all(event["id"] == tiny_run.job_id for event in events)
    assert events[-1]["status"] == "succeeded"
    assert events[-1]["model_id"] == tiny_run.final["model_id"]
    assert all(event["status"] not in FINAL for event in events[:-1])
    assert any(event["status"] == "running" for event in events)
    progress = [event["progress"] for event in events]
    assert all(a <= b for a, b in zip(progress, progress[1:])), progress


def test_events_of_a_finished_job_is_one_event(http, tiny_run):
    """The stream ends by itself after the one event (read_events returns when the server closes it;
    the 120 s read timeout only guards against a hang)."""
    with http.stream("GET", f"/jobs/{tiny_run.job_id}/events", timeout=120.0) as response:
        assert response.status_code == 200
        events = read_events(response)
    assert len(events) == 1
    assert events[0]["status"] == "succeeded" and events[0]["id"] == tiny_run.job_id


def test_job_list_and_filter(http, tiny_run):
    everything = http.get("/jobs").json()
    assert everything["count"] == len(everything["data"]) >= 1
    assert tiny_run.job_id in [job["id"] for job in everything["data"]]
    succeeded = http.get("/jobs", params={"status": "succeeded"}).json()
    assert tiny_run.job_id in [job["id"] for job in succeeded["data"]]
    assert all(job["status"] == "succeeded" for job in succeeded["data"])
    failed = http.get("/jobs", params={"status": "failed"}).json()
    assert tiny_run.job_id not in [job["id"] for job in failed["data"]]


def test_the_model_is_listed_and_described(http, tiny_run, tiny_model):
    listed = {model["id"]: model for model in http.get("/models").json()["data"]}
    assert tiny_model["id"] in listed
    summary = listed[tiny_model["id"]]
    assert summary["job_id"] == tiny_run.job_id
    assert summary["dataset_id"] == tiny_run.dataset["id"]
    assert summary["classes"] == ["blue", "red"]
    assert summary["image_size"] == 32 and summary["backbone"] == "mobilenet"

    assert tiny_model["job_id"] == tiny_run.job_id
    assert tiny_model["classes"] == ["blue", "red"]
    assert tiny_model["spec"]["alpha"] == 0.25 and tiny_model["spec"]["weights"] == "none"
    for key in ("metrics", "warmup_metrics"):
        metrics = tiny_model[key]
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert set(metrics["report"]["per_class"]) == {"blue", "red"}
        assert len(metrics["confusion_matrix"]) == 2
        assert sum(map(sum, metrics["confusion_matrix"])) == 4  # the held-out quarter of 16 images
    assert {"load_s", "warmup_s", "finetune_s"} <= set(tiny_model["timings"])
    assert tiny_model["timings"]["warmup_s"] > 0 and tiny_model["timings"]["finetune_s"] > 0
    assert len(tiny_model["history"]) == 4


def test_the_model_downloads_as_a_keras_file(http, tiny_model):
    response = http.get(f"/models/{tiny_model['id']}/download")
    assert response.status_code == 200
    assert f"{tiny_model['id']}.keras" in response.headers["content-disposition"]
    assert response.content[:2] == b"PK"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert {"config.json", "metadata.json"} <= set(archive.namelist())


def test_predict_two_images(http, tiny_model):
    files = [
        ("file", ("a_red.png", make_image_bytes("red", 40, seed=7), "image/png")),
        ("file", ("b_blue.jpg", make_image_bytes("blue", 40, fmt="JPEG", seed=8), "image/jpeg")),
    ]
    newest = http.get("/models").json()["data"][0]["id"]  # newest first
    response = http.post("/predict", files=files, data={"top_k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == newest  # the newest model is the default
    assert [result["filename"] for result in body["results"]] == ["a_red.png", "b_blue.jpg"]
    for result in body["results"]:
        predictions = result["predictions"]
        assert {p["label"] for p in predictions} == {"blue", "red"}
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)

    one = http.post("/predict", files=files[:1], data={"model_id": tiny_model["id"], "top_k": "1"}).json()
    assert one["model_id"] == tiny_model["id"]
    assert len(one["results"]) == 1 and len(one["results"][0]["predictions"]) == 1


def test_latencies(http, tiny_run, tiny_model):
    """Printed for the lead to quote, not asserted (beyond the calls succeeding)."""
    job_seconds = []
    for _ in range(50):
        started = time.perf_counter()
        assert http.get(f"/jobs/{tiny_run.job_id}").status_code == 200
        job_seconds.append(time.perf_counter() - started)

    image = make_image_bytes("red", 40, seed=3)
    files = [("file", ("one.png", image, "image/png"))]
    for _ in range(5):  # warm-up: model loading happened before, this settles the batcher and threads
        assert http.post("/predict", files=files, data={"model_id": tiny_model["id"]}).status_code == 200
    predict_seconds = []
    for _ in range(30):
        started = time.perf_counter()
        response = http.post("/predict", files=files, data={"model_id": tiny_model["id"]})
        predict_seconds.append(time.perf_counter() - started)
        assert response.status_code == 200
    print(
        f"\n[e2e] GET /jobs/{{id}} over HTTP: p50 {statistics.median(job_seconds) * 1000:.1f} ms, "
        f"p90 {percentile(job_seconds, 0.9) * 1000:.1f} ms (50 calls)"
    )
    print(
        f"[e2e] POST /predict, one 40x40 PNG, tiny model: p50 {statistics.median(predict_seconds) * 1000:.1f} ms, "
        f"p90 {percentile(predict_seconds, 0.9) * 1000:.1f} ms (30 calls after 5 warm-up)"
    )


# --- failures and cancellation ------------------------------------------------------------------


def test_a_job_whose_images_vanished_fails_with_its_reason(http, live_service, tmp_path):
    dataset = upload_dataset(http, make_dataset_zip(tmp_path / "vanishing.zip", per_class=4))
    images = live_service.data_dir / dataset["id"] / "images"
    red = sorted((images / "red").iterdir())
    assert len(red) == 4
    for path in red[1:]:  # on disk, behind the service's back: one red image is left
        path.unlink()

    job = submit(http, dataset["id"], TINY_SPEC)
    final = poll(http, live_service, job["id"], until_final)[-1]
    assert final["status"] == "failed", f"{final}\n{worker_logs(live_service)}"
    assert final["error"]["type"] == "BadDataset"
    assert "at least 2 images" in final["error"]["message"] and "red" in final["error"]["message"]
    assert final["model_id"] is None and final["finished_at"] is not None
    assert model_ids_of_job(http, job["id"]) == []
    assert http.post(f"/jobs/{job['id']}/cancel").status_code == 409


def test_a_running_job_is_cancelled_and_the_worker_takes_the_next(http, live_service, tiny_run):
    dataset_id = tiny_run.dataset["id"]
    job = submit(http, dataset_id, LONG_SPEC)
    polled = poll(
        http, live_service, job["id"], lambda j: j["status"] in FINAL or (j["status"] == "running" and j["batch"] > 0)
    )
    running = polled[-1]
    assert running["status"] == "running", running
    assert running["phase"] in ("warmup", "finetune")

    busy = http.delete(f"/datasets/{dataset_id}")  # a dataset in use cannot go
    assert busy.status_code == 409 and job["id"] in busy.json()["detail"]
    not_ready = http.post(
        "/predict", data={"model_id": job["id"]}, files=[("file", ("x.png", make_image_bytes("red"), "image/png"))]
    )
    assert not_ready.status_code == 409 and "running" in not_ready.json()["detail"]

    asked = time.perf_counter()
    response = http.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] in ("running", "cancelled")  # a running job stops at its next batch
    final = poll(http, live_service, job["id"], until_final, timeout=120)[-1]
    cancel_seconds = time.perf_counter() - asked
    assert final["status"] == "cancelled", f"{final}\n{worker_logs(live_service)}"
    assert final["model_id"] is None and final["error"] is None and final["finished_at"] is not None
    assert final["progress"] < 0.5
    print(f"\n[e2e] cancel of a running job: {cancel_seconds:.2f} s from POST /cancel to status cancelled")

    assert http.post(f"/jobs/{job['id']}/cancel").status_code == 409

    sent = time.perf_counter()
    after = submit(http, dataset_id, TINY_SPEC)
    done = poll(http, live_service, after["id"], until_final)[-1]
    assert done["status"] == "succeeded", f"{done}\n{worker_logs(live_service)}"
    print(
        f"[e2e] the next tiny job (API warm): {time.perf_counter() - sent:.1f} s from POST /jobs to succeeded; "
        f"created_at->started_at {timestamp(done['started_at']) - timestamp(done['created_at']):.1f} s"
    )
    assert model_ids_of_job(http, after["id"]) == [done["model_id"]]
    # the worker took the next job only once the cancelled job's process had exited: whatever that
    # process wrote has landed by now (no fixed sleep needed)
    assert model_ids_of_job(http, job["id"]) == []
    for manifest in live_service.model_dir.glob("*/manifest.json"):
        assert json.loads(manifest.read_text())["job_id"] != job["id"]
    assert not (live_service.model_dir / ".checkpoints" / job["id"]).exists()


# --- 4xx over real HTTP -------------------------------------------------------------------------


def test_predict_refusals(http, tiny_model, tiny_run):
    text = http.post(
        "/predict", files=[("file", ("notes.jpg", b"these are my notes, not a photo\n" * 4, "image/jpeg"))]
    )
    assert text.status_code == 415
    assert "notes.jpg" in text.json()["detail"]

    corrupt = make_image_bytes("red", 40)[:80]
    broken = http.post(
        "/predict",
        files=[
            ("file", ("ok.png", make_image_bytes("blue"), "image/png")),
            ("file", ("broken.png", corrupt, "image/png")),
        ],
    )
    assert broken.status_code == 400
    assert "broken.png" in broken.json()["detail"]

    many = [("file", (f"{n}.png", make_image_bytes("red", 8, seed=n), "image/png")) for n in range(33)]
    too_many = http.post("/predict", files=many)
    assert too_many.status_code == 413
    assert "33" in too_many.json()["detail"]

    assert http.post("/predict", files=many[:1], data={"model_id": "nosuchmodel"}).status_code == 404
    by_job = http.post("/predict", files=many[:1], data={"model_id": tiny_run.job_id})
    assert by_job.status_code == 404
    assert tiny_model["id"] in by_job.json()["detail"]  # it names the model the job produced
    assert http.post("/predict", files=many[:1], data={"top_k": "0"}).status_code == 422


def test_not_found_conflict_and_validation(http, tiny_run):
    assert http.get("/jobs/nosuchjob").status_code == 404
    assert http.get("/models/nosuchmodel").status_code == 404
    assert http.get("/models/nosuchmodel/download").status_code == 404
    assert http.get("/datasets/nosuchdataset").status_code == 404
    assert http.post("/jobs", json={"dataset_id": "nosuchdataset"}).status_code == 404
    assert http.post(f"/jobs/{tiny_run.job_id}/cancel").status_code == 409

    invalid = http.post(
        "/jobs",
        json={
            "dataset_id": tiny_run.dataset["id"],
            "backbone": "vgg16",
            "alpha": 0.5,
            "warmup": {"learning_rate": -1},
            "surprise": True,
        },
    )
    assert invalid.status_code == 422
    locations = [error["loc"] for error in invalid.json()["detail"]]
    assert any("alpha" in loc for loc in locations)
    assert any("learning_rate" in loc for loc in locations)
    assert any("surprise" in loc for loc in locations)
    assert http.get("/jobs", params={"status": "bogus"}).status_code == 422


def test_bodies_over_max_upload_mb_are_413(live_service, tmp_path):
    with live_service.extra_api(tmp_path, timeout=120.0, MAX_UPLOAD_MB="1") as small:
        big = os.urandom(1536 * 1024)
        for path in ("/datasets", "/predict"):
            response = small.post(path, files={"file": ("big.zip", big, "application/octet-stream")})
            assert response.status_code == 413, (path, response.text)
            assert response.json() == {"detail": "request body larger than 1 MB"}

        def chunked():
            boundary = "e2e-boundary"
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
                "Content-Type: application/zip\r\n\r\n"
            ).encode()
            for start in range(0, len(big), 64 * 1024):
                yield big[start : start + 64 * 1024]
            yield f"\r\n--{boundary}--\r\n".encode()

        streamed = small.post(
            "/datasets", content=chunked(), headers={"content-type": "multipart/form-data; boundary=e2e-boundary"}
        )
        assert streamed.status_code == 413, streamed.text

        fits = small.post(
            "/datasets",
            files={
                "file": (
                    "fits.zip",
                    make_dataset_zip(tmp_path / "fits.zip", per_class=3).read_bytes(),
                    "application/zip",
                )
            },
        )
        assert fits.status_code == 201, fits.text
        assert small.get("/healthz").status_code == 200
