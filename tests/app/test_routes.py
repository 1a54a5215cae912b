"""The REST routes, in process: `create_app` on this session's Redis, temporary stores and a recording
`enqueue`, driven through FastAPI's TestClient. No worker runs: jobs stay queued unless a test moves them."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from finetune.launcher import free_port
from finetune.settings import Settings
from tests.helpers import make_dataset_zip, make_image_bytes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

TINY_JOB = {
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "none",
    "image_size": 32,
    "batch_size": 8,
    "warmup": {"epochs": 1},
    "finetune": {"epochs": 1},
}


def make_settings(tmp_path: Path, redis_url: str, **overrides) -> Settings:
    values = dict(
        redis_url=redis_url,
        model_dir=str(tmp_path / "models"),
        data_dir=str(tmp_path / "data"),
        cache_dir=str(tmp_path / "cache"),
        max_upload_mb=1.0,
        max_predict_files=4,
        archive_max_files=1000,
        archive_max_bytes=50 * 1024 * 1024,
        api_keys="",
        cors_origins="",
    )
    values.update(overrides)
    return Settings(**values)


class Recorder(list):
    """The `enqueue` the app is given: remembers the ids instead of sending them to Celery."""

    def __call__(self, job_id: str) -> None:
        self.append(job_id)


@pytest.fixture
def enqueued() -> Recorder:
    return Recorder()


@pytest.fixture
def settings(tmp_path, redis_db) -> Settings:
    """This module's own database on the session's Redis, flushed before each test."""
    redis.Redis.from_url(redis_db).flushdb()
    return make_settings(tmp_path, redis_db)


@pytest.fixture
def client(settings, enqueued):
    with TestClient(create_app(settings, enqueue=enqueued)) as test_client:
        yield test_client


# --- archives -----------------------------------------------------------------------------------


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(entries: dict[str, bytes], *, gz: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def image_entries(classes=("red", "blue"), per_class: int = 3) -> dict[str, bytes]:
    return {
        f"{name}/{name}_{n}.png": make_image_bytes(name, 24, seed=i * 100 + n)
        for i, name in enumerate(classes)
        for n in range(per_class)
    }


def upload(client: TestClient, data: bytes, filename: str = "set.zip", name: str | None = None, **kwargs):
    form = {"name": name} if name is not None else None
    return client.post("/datasets", files={"file": (filename, data, "application/octet-stream")}, data=form, **kwargs)


@pytest.fixture
def dataset(client, tmp_path) -> dict:
    response = upload(client, make_dataset_zip(tmp_path / "tiny.zip").read_bytes(), "tiny.zip")
    assert response.status_code == 201, response.text
    return response.json()


def post_job(client: TestClient, dataset_id: str, **overrides):
    return client.post("/jobs", json={"dataset_id": dataset_id, **TINY_JOB, **overrides})


# --- datasets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_upload_each_archive_format(client, kind):
    entries = image_entries()
    data = {
        "zip": lambda: zip_bytes(entries),
        "tar": lambda: tar_bytes(entries),
        "tar.gz": lambda: tar_bytes(entries, gz=True),
    }[kind]()
    response = upload(client, data, f"colours.{kind}")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "name",
        "classes",
        "counts",
        "num_images",
        "skipped",
        "created_at",
        "splits",
        "parent_id",
        "change",
        "children",
    }
    assert body["name"] == "colours"
    assert body["classes"] == ["blue", "red"]
    assert body["counts"] == {"blue": 3, "red": 3}
    assert body["num_images"] == 6
    assert body["skipped"] == []
    assert (body["splits"], body["parent_id"], body["change"]) == (None, None, None)
    assert body["children"] == [] and client.get(f"/datasets/{body['id']}").json() == body


def test_upload_takes_the_name_field_and_lists_skipped_files(client):
    entries = image_entries() | {
        "red/notes.txt": b"not a picture",
        "blue/broken.png": make_image_bytes("blue", 24)[:60],
    }
    response = upload(client, zip_bytes(entries), "x.zip", name="my colours")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "my colours"
    assert body["num_images"] == 6
    skipped = {item["path"]: item["reason"] for item in body["skipped"]}
    assert set(skipped) == {"red/notes.txt", "blue/broken.png"}
    assert ".txt" in skipped["red/notes.txt"]
    assert skipped["blue/broken.png"]


def test_upload_refusals(client):
    not_archive = upload(client, b"just some text, not an archive" * 10, "fake.zip")
    assert not_archive.status_code == 400
    assert "archive" in not_archive.json()["detail"]

    escaping = upload(client, zip_bytes(image_entries() | {"../evil.png": make_image_bytes("red", 24)}))
    assert escaping.status_code == 400
    assert "evil.png" in escaping.json()["detail"] or ".." in escaping.json()["detail"]

    one_class = upload(client, zip_bytes(image_entries(classes=("red",))))
    assert one_class.status_code == 400
    assert "2 classes" in one_class.json()["detail"]

    too_large = upload(client, os.urandom(1024 * 1024 + 4096), "big.zip")  # MAX_UPLOAD_MB is 1 here
    assert too_large.status_code == 413
    assert too_large.json() == {"detail": "request body larger than 1 MB"}

    assert client.get("/datasets").json() == {"data": [], "count": 0}


def chunked_multipart(payload: bytes, filename: str = "set.zip", chunk: int = 64 * 1024):
    """A multipart body as a generator, so the client sends it chunked, without a Content-Length."""
    boundary = "test-boundary-7f3a"

    def parts():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for start in range(0, len(payload), chunk):
            yield payload[start : start + chunk]
        yield f"\r\n--{boundary}--\r\n".encode()

    return parts(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_chunked_bodies_are_counted(client):
    body, headers = chunked_multipart(zip_bytes(image_entries()))
    accepted = client.post("/datasets", content=body, headers=headers)
    assert accepted.status_code == 201, accepted.text
    assert accepted.request.headers.get("transfer-encoding") == "chunked"

    for path in ("/datasets", "/predict"):
        body, headers = chunked_multipart(os.urandom(1024 * 1024 + 4096))
        refused = client.post(path, content=body, headers=headers)
        assert refused.status_code == 413, (path, refused.text)
        assert refused.json() == {"detail": "request body larger than 1 MB"}


def test_fractional_upload_limit_is_reported_as_set(settings, enqueued):
    half = settings.model_copy(update={"max_upload_mb": 0.5})
    with TestClient(create_app(half, enqueue=enqueued)) as client:
        response = upload(client, os.urandom(600 * 1024), "big.zip")
        assert response.status_code == 413
        assert response.json()["detail"] == "request body larger than 0.5 MB"


def test_get_and_delete_unknown_dataset_is_404(client):
    assert client.get("/datasets/nope123").status_code == 404
    assert client.delete("/datasets/nope123").status_code == 404
    assert client.get("/datasets/..%2F..%2Fetc").status_code == 404


def test_list_and_delete_dataset(client, dataset):
    listed = client.get("/datasets").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == dataset["id"]
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    assert client.get(f"/datasets/{dataset['id']}").status_code == 404
    assert client.get("/datasets").json()["count"] == 0


def test_delete_dataset_in_use_by_an_active_job_is_409(client, dataset):
    job = post_job(client, dataset["id"]).json()
    refused = client.delete(f"/datasets/{dataset['id']}")
    assert refused.status_code == 409
    assert job["id"] in refused.json()["detail"]
    assert client.get(f"/datasets/{dataset['id']}").status_code == 200

    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204


def test_samples_and_files(client, dataset):
    samples = client.get(f"/datasets/{dataset['id']}/samples", params={"per_class": 2}).json()
    assert samples["count"] == 2
    by_label = {item["label"]: item["files"] for item in samples["data"]}
    assert set(by_label) == {"red", "blue"}
    assert by_label["red"] == ["red/red_000.png", "red/red_001.png"]

    image = client.get(f"/datasets/{dataset['id']}/files/red/red_000.png")
    assert image.status_code == 200
    assert image.content == make_image_bytes("red", 40, seed=0)
    assert image.headers["x-content-type-options"] == "nosniff"

    assert client.get(f"/datasets/{dataset['id']}/files/red/missing.png").status_code == 404
    assert client.get(f"/datasets/{dataset['id']}/files/green/red_000.png").status_code == 404
    assert client.get(f"/datasets/{dataset['id']}/files/dataset.json").status_code == 404
    assert client.get(f"/datasets/{dataset['id']}/files/red/..%2F..%2Fdataset.json").status_code == 404
    assert client.get("/datasets/nope123/files/red/red_000.png").status_code == 404
    assert client.get(f"/datasets/{dataset['id']}/samples", params={"per_class": 0}).status_code == 422


# --- jobs ---------------------------------------------------------------------------------------


def test_post_job_is_202_with_location_and_enqueued(client, dataset, enqueued):
    response = post_job(client, dataset["id"])
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["dataset_id"] == dataset["id"]
    assert job["spec"]["backbone"] == "mobilenet" and job["spec"]["alpha"] == 0.25
    assert job["spec"]["warmup"]["optimizer"] == "rmsprop"  # defaults fill what the request left out
    assert job["progress"] == 0.0 and job["history"] == [] and job["error"] is None
    assert response.headers["location"].endswith(f"/jobs/{job['id']}")
    assert enqueued == [job["id"]]
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "queued"


def test_job_spec_defaults_are_the_seed_recipe(client, dataset):
    job = client.post("/jobs", json={"dataset_id": dataset["id"]}).json()
    spec = job["spec"]
    assert spec["backbone"] == "vgg16" and spec["weights"] == "imagenet" and spec["image_size"] == 224
    assert spec["batch_size"] == 32 and spec["validation_split"] == 0.25
    assert spec["warmup"]["epochs"] == 25 and spec["finetune"]["epochs"] == 100
    assert spec["augmentation"]["rotation"] == 30


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"backbone": "vgg16", "alpha": 0.5}, "alpha"),
        ({"alpha": 0.3, "weights": "imagenet"}, "alpha"),
        ({"warmup": {"learning_rate": 0}}, "learning_rate"),
        ({"warmup": {"epochs": -1}}, "warmup"),
        ({"finetune": {"unfreeze_from": "no_such_layer"}}, "finetune"),
        ({"validation_split": 1.5}, "validation_split"),
        ({"image_size": 16}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"backbone": "alexnet"}, "backbone"),
        ({"learning_rate": 0.01}, "learning_rate"),
        ({"head": {"units": 8, "activation": "relu"}}, "activation"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(client, dataset, enqueued, overrides, field):
    response = post_job(client, dataset["id"], **overrides)
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations
    assert enqueued == []


def test_missing_dataset_id_is_422_and_unknown_dataset_404(client, enqueued):
    missing = client.post("/jobs", json={"backbone": "vgg16"})
    assert missing.status_code == 422
    assert any("dataset_id" in error["loc"] for error in missing.json()["detail"])
    unknown = post_job(client, "nosuchdataset")
    assert unknown.status_code == 404
    assert "nosuchdataset" in unknown.json()["detail"]
    assert enqueued == []


def test_a_broker_that_refuses_marks_the_job_failed_and_answers_503(settings, dataset):
    def broken(job_id: str) -> None:
        raise ConnectionError("broker down")

    with TestClient(create_app(settings, enqueue=broken)) as other:
        response = post_job(other, dataset["id"])
        assert response.status_code == 503
        failed = other.get("/jobs", params={"status": "failed"}).json()["data"]
    assert len(failed) == 1 and failed[0]["error"]["type"] == "ConnectionError"


def test_list_jobs_and_status_filter(client, dataset):
    first = post_job(client, dataset["id"]).json()
    second = post_job(client, dataset["id"]).json()
    client.post(f"/jobs/{first['id']}/cancel")

    everything = client.get("/jobs").json()
    assert everything["count"] == 2
    assert [job["id"] for job in everything["data"]] == [second["id"], first["id"]]  # newest first
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert cancelled == {"data": [client.get(f"/jobs/{first['id']}").json()], "count": 1}
    queued = client.get("/jobs", params={"status": "queued"}).json()
    assert [job["id"] for job in queued["data"]] == [second["id"]]
    assert client.get("/jobs", params={"status": "running"}).json() == {"data": [], "count": 0}
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422


def test_unknown_job_is_404(client):
    assert client.get("/jobs/nope123").status_code == 404
    assert client.post("/jobs/nope123/cancel").status_code == 404
    assert client.get("/jobs/nope123/events").status_code == 404


def test_cancel_queued_job_then_cancel_again_is_409(client, dataset):
    job = post_job(client, dataset["id"]).json()
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]


def test_cancel_running_job_flags_it(client, dataset):
    job = post_job(client, dataset["id"]).json()
    service = client.app.state.service
    service.jobs.update(job["id"], {"status": "running", "started_at": job["created_at"]})
    response = client.post(f"/jobs/{job['id']}/cancel").json()
    assert response["status"] == "running"  # a running job stops at its next batch, in the worker
    assert service.jobs.cancel_requested(job["id"])


def test_events_of_a_final_job_is_one_event(client, dataset):
    job = post_job(client, dataset["id"]).json()
    client.post(f"/jobs/{job['id']}/cancel")
    with client.stream("GET", f"/jobs/{job['id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [block for block in body.split("\n\n") if block.strip()]
    assert len(events) == 1
    assert events[0].startswith("event: job\ndata: ")
    assert '"status": "cancelled"' in events[0]


# --- models and predict -------------------------------------------------------------------------


def test_models_empty_and_unknown(client):
    assert client.get("/models").json() == {"data": [], "count": 0}
    assert client.get("/models/nope123").status_code == 404
    assert client.get("/models/nope123/download").status_code == 404
    assert client.delete("/models/nope123").status_code == 404


def test_predict_without_a_model_is_404(client, dataset):
    files = [("file", ("a.png", make_image_bytes("red", 24), "image/png"))]
    none_yet = client.post("/predict", files=files)
    assert none_yet.status_code == 404
    assert "no model" in none_yet.json()["detail"]
    assert client.post("/predict", files=files, data={"model_id": "nope123"}).status_code == 404

    job = post_job(client, dataset["id"]).json()  # a job id given as model_id: its model is not ready
    not_ready = client.post("/predict", files=files, data={"model_id": job["id"]})
    assert not_ready.status_code == 409
    assert "queued" in not_ready.json()["detail"]


def test_predict_too_many_files_is_413_and_no_file_422(client):
    files = [("file", (f"{n}.png", make_image_bytes("red", 24), "image/png")) for n in range(5)]
    assert client.post("/predict", files=files).status_code == 413  # max_predict_files is 4 here
    assert client.post("/predict", data={"top_k": "2"}).status_code == 422


# --- backbones ----------------------------------------------------------------------------------


def test_backbones(client):
    body = client.get("/backbones").json()
    by_name = {item["name"]: item for item in body["data"]}
    assert body["count"] == len(by_name) >= 6
    assert by_name["vgg16"]["default_unfreeze_from"] == 15
    assert by_name["mobilenet"]["has_alpha"] and 0.25 in by_name["mobilenet"]["alphas"]
    assert not by_name["vgg16"]["has_alpha"]


def test_vgg16_layers(client):
    body = client.get("/backbones/vgg16/layers").json()
    assert body["count"] == 19 == len(body["data"])
    layers = body["data"]
    assert [layer["index"] for layer in layers] == list(range(19))
    assert layers[15]["name"] == "block5_conv1"
    assert layers[15]["type"] == "Conv2D" and layers[15]["params"] == 3 * 3 * 512 * 512 + 512
    assert layers[0]["params"] == 0 and not layers[0]["trainable_weights"]
    assert client.get("/backbones/alexnet/layers").status_code == 404
    assert client.get("/backbones/vgg16/layers", params={"alpha": 0}).status_code == 422


# --- health, metrics, docs, keys ----------------------------------------------------------------


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_readyz_is_503_when_redis_is_unreachable(tmp_path, enqueued):
    settings = make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings, enqueue=enqueued)) as offline:
        assert offline.get("/healthz").status_code == 200
        response = offline.get("/readyz")
        assert response.status_code == 503
        assert "Redis" in response.json()["detail"]
        assert offline.get("/jobs").status_code == 503


def test_metrics_counts_requests(client):
    client.get("/healthz")
    client.get("/jobs/nope123")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE finetune_http_requests_total counter" in text
    assert 'finetune_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'finetune_http_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 1.0' in text
    assert "finetune_http_request_seconds_bucket" in text
    assert 'finetune_jobs{status="queued"}' in text


def test_docs_and_openapi_are_served(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    for path in (
        "/datasets",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/events",
        "/models",
        "/models/{model_id}",
        "/models/{model_id}/download",
        "/predict",
        "/healthz",
        "/readyz",
        "/backbones",
    ):
        assert path in schema["paths"], path


def test_api_keys(settings, enqueued):
    keyed = settings.model_copy(update={"api_keys": "alpha-key, beta-key"})
    with TestClient(create_app(keyed, enqueue=enqueued)) as client:
        for path in ("/datasets", "/jobs", "/models", "/backbones", "/metrics"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert "API key" in refused.json()["detail"]
        assert client.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/jobs", headers={"X-API-Key": "alpha-ke"}).status_code == 401
        assert client.get("/jobs", headers={"Authorization": "Bearer alpha-key"}).status_code == 200
        assert client.get("/jobs", headers={"X-API-Key": "beta-key"}).status_code == 200
        assert client.post("/predict", files=[("file", ("a.png", b"x", "image/png"))]).status_code == 401
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
