"""The export routes in process (issue 13): records in the model's folder, 202/409/404/422, cancel,
download, and the model's deletion taking its exports along. No worker runs: the test plays its part
through the store (the worker's own path is tested in tests/integration/test_exports.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from finetune.states import JobStatus
from finetune.stores.models import ModelStore
from tests.app.test_routes import Recorder, settings  # noqa: F401  (the fixture)


class ExportRecorder(list):
    def __call__(self, model_id: str, fmt: str, build_id: str) -> None:
        self.append((model_id, fmt, build_id))


@pytest.fixture
def exports_sent() -> ExportRecorder:
    return ExportRecorder()


@pytest.fixture
def client(settings, exports_sent):  # noqa: F811
    with TestClient(create_app(settings, enqueue=Recorder(), enqueue_export=exports_sent)) as test_client:
        yield test_client


@pytest.fixture
def model_id(settings):  # noqa: F811
    from tests.finetune.conftest import FakeResult, colour_classifier, tiny_spec

    result = FakeResult(
        model=colour_classifier(), spec=tiny_spec(backbone="vgg16", alpha=None), classes=["blue", "green", "red"]
    )
    return ModelStore(settings.model_dir, cache_dir=settings.cache_dir).save(result)["id"]


def test_post_is_202_queued_and_sent_to_the_workers(client, model_id, exports_sent, settings):  # noqa: F811
    response = client.post(f"/models/{model_id}/exports", json={"format": "onnx"})
    assert response.status_code == 202, response.text
    record = response.json()
    assert record["status"] == "queued" and record["format"] == "onnx" and record["model_id"] == model_id
    assert record["download_url"] is None and record["parity"] is None
    assert response.headers["location"] == f"/models/{model_id}/exports/onnx"
    assert exports_sent == [(model_id, "onnx", record["id"])]
    # the record lives with the model
    assert (ModelStore(settings.model_dir).location.local_path(model_id, "exports", "onnx", "export.json")).is_file()
    assert client.get(f"/models/{model_id}/exports/onnx").json()["id"] == record["id"]
    listing = client.get(f"/models/{model_id}/exports").json()
    assert listing["count"] == 1 and listing["data"][0]["id"] == record["id"]


def test_a_second_post_while_queued_is_409_then_allowed_after_cancel(client, model_id, exports_sent):
    first = client.post(f"/models/{model_id}/exports", json={"format": "litert"}).json()
    again = client.post(f"/models/{model_id}/exports", json={"format": "litert"})
    assert again.status_code == 409 and "queued" in again.json()["detail"]
    cancelled = client.post(f"/models/{model_id}/exports/litert/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"/models/{model_id}/exports/litert/cancel").status_code == 409
    rebuilt = client.post(f"/models/{model_id}/exports", json={"format": "litert"})
    assert rebuilt.status_code == 202 and rebuilt.json()["id"] != first["id"]
    assert len(exports_sent) == 2


def test_a_succeeded_export_downloads_and_is_rebuilt_only_when_asked(client, model_id, settings, tmp_path):  # noqa: F811
    record = client.post(f"/models/{model_id}/exports", json={"format": "litert"}).json()
    assert client.get(f"/models/{model_id}/exports/litert/download").status_code == 409
    store = client.app.state.service.exports
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(b"TFL3 pretend")
    store.publish_artifact(model_id, "litert", artifact)
    done = store.finish(record, JobStatus.SUCCEEDED, file="model.tflite", size_bytes=12, parity={"available": True})
    store.record_in_manifest(done)

    shown = client.get(f"/models/{model_id}/exports/litert").json()
    assert shown["status"] == "succeeded"
    assert shown["download_url"] == f"/models/{model_id}/exports/litert/download"
    download = client.get(shown["download_url"])
    assert download.status_code == 200 and download.content == b"TFL3 pretend"
    assert model_id in download.headers["content-disposition"]
    assert client.get(f"/models/{model_id}").json()["exports"]["litert"]["status"] == "succeeded"

    assert client.post(f"/models/{model_id}/exports", json={"format": "litert"}).status_code == 409
    again = client.post(f"/models/{model_id}/exports", json={"format": "litert", "rebuild": True})
    assert again.status_code == 202 and again.json()["status"] == "queued"


def test_unknown_model_is_404_and_bad_format_422(client, model_id):
    assert client.post("/models/nope/exports", json={"format": "onnx"}).status_code == 404
    assert client.get("/models/nope/exports").status_code == 404
    assert client.post(f"/models/{model_id}/exports", json={"format": "coreml"}).status_code == 422
    assert client.post(f"/models/{model_id}/exports", json={}).status_code == 422
    assert client.get(f"/models/{model_id}/exports/coreml").status_code == 422
    assert client.get(f"/models/{model_id}/exports/onnx").status_code == 404


def test_deleting_the_model_removes_its_exports(client, model_id, settings):  # noqa: F811
    client.post(f"/models/{model_id}/exports", json={"format": "savedmodel"})
    assert client.delete(f"/models/{model_id}").status_code == 204
    assert not ModelStore(settings.model_dir).location.local_path(model_id).exists()
    assert client.get(f"/models/{model_id}/exports").status_code == 404


def test_an_unreachable_queue_is_503_and_the_record_failed(settings, model_id):  # noqa: F811
    def broken(*args):
        raise ConnectionError("broker down")

    with TestClient(create_app(settings, enqueue=Recorder(), enqueue_export=broken)) as client:
        response = client.post(f"/models/{model_id}/exports", json={"format": "onnx"})
        assert response.status_code == 503
        record = client.get(f"/models/{model_id}/exports/onnx").json()
        assert record["status"] == "failed" and "broker down" in record["error"]["message"]
