"""`PredictFastPath`: the plain /predict answered the way the FastAPI route answers it, byte for byte;
everything else left to the route (its 422s), domain errors mapped as the app maps them, the route
named in the metrics, the key check still first."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from app import predict_fast_path
from app.main import create_app
from finetune.stores.models import ModelStore
from tests.app.test_routes import Recorder, settings  # noqa: F401  (the fixture)
from tests.helpers import make_image_bytes


@pytest.fixture
def model_id(settings):  # noqa: F811
    from tests.finetune.conftest import FakeResult, colour_classifier, tiny_spec

    result = FakeResult(
        model=colour_classifier(), spec=tiny_spec(backbone="vgg16", alpha=None), classes=["blue", "green", "red"]
    )
    return ModelStore(settings.model_dir, cache_dir=settings.cache_dir).save(result)["id"]


@pytest.fixture
def taken(monkeypatch):
    """The requests the fast path answered itself (the others went to the FastAPI route)."""
    answered = []
    classify = predict_fast_path.classify

    async def counting(app, images, **kwargs):
        answered.append([image.name for image in images])
        return await classify(app, images, **kwargs)

    monkeypatch.setattr(predict_fast_path, "classify", counting)
    return answered


@pytest.fixture
def client(settings):  # noqa: F811
    with TestClient(create_app(settings, enqueue=Recorder())) as test_client:
        yield test_client


def files(*colours: str) -> list:
    return [("file", (f"{c}.png", make_image_bytes(c, 24, seed=i), "image/png")) for i, c in enumerate(colours)]


def test_the_fast_path_answers_as_the_route_does(client, model_id, taken):
    """The same images and fields: once plain (the fast path), once with a field only the route takes
    (FastAPI ignores a form field it does not declare); the same status, headers and bytes."""
    data = {"model_id": model_id, "top_k": "2", "threshold": "0.4"}
    fast = client.post("/predict", files=files("red", "blue", "green"), data=data)
    routed = client.post("/predict", files=files("red", "blue", "green"), data={**data, "note": "x"})
    assert taken == [["red.png", "blue.png", "green.png"]]
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    body = fast.json()
    assert body["model_id"] == model_id
    assert [r["label"] for r in body["results"]] == ["red", "blue", "green"]
    assert all(len(r["predictions"]) == 2 for r in body["results"])


def test_defaults_as_the_route_declares_them(client, model_id, taken):
    """No model_id: the newest model; no top_k: 5, clipped to the 3 classes; an empty filename: file0."""
    image = make_image_bytes("red", 24)
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename=""\r\nContent-Type: image/png\r\n\r\n'
        + image
        + b"\r\n--b--\r\n"
    )
    response = client.post("/predict", content=multipart, headers={"Content-Type": "multipart/form-data; boundary=b"})
    body = response.json()
    assert taken == [["file0"]]
    assert body["model_id"] == model_id
    assert body["results"][0]["filename"] == "file0"
    assert len(body["results"][0]["predictions"]) == 3


@pytest.mark.parametrize(
    "data, field",
    [
        ({"top_k": "0"}, "top_k"),
        ({"top_k": "1001"}, "top_k"),
        ({"top_k": "two"}, "top_k"),
        ({"threshold": "2"}, "threshold"),
    ],
)
def test_values_out_of_range_get_the_routes_422(client, model_id, taken, data, field):
    response = client.post("/predict", files=files("red"), data=data)
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]
    assert taken == []


def test_a_body_without_files_or_not_multipart_gets_the_routes_422(client, model_id, taken):
    assert client.post("/predict", data={"top_k": "2"}).status_code == 422
    assert client.post("/predict", json={"file": "x"}).status_code == 422
    assert taken == []


def test_domain_errors_are_answered_as_the_error_handler_answers_them(client, model_id, taken):
    unknown = client.post("/predict", files=files("red"), data={"model_id": "nope123"})
    assert unknown.status_code == 404 and "nope123" in unknown.json()["detail"]
    corrupt = client.post("/predict", files=[("file", ("broken.png", b"\x89PNG\r\n\x1a\nxx", "image/png"))])
    assert corrupt.status_code == 400 and "broken.png" in corrupt.json()["detail"]
    text = client.post("/predict", files=[("file", ("notes.txt", b"hello there, not an image", "text/plain"))])
    assert text.status_code == 415 and "notes.txt" in text.json()["detail"]
    too_many = client.post("/predict", files=files("red", "red", "red", "red", "red"))  # max_predict_files is 4
    assert too_many.status_code == 413
    assert len(taken) == 4  # all four answered by the fast path, none by the route


def test_fast_path_requests_are_counted_under_the_predict_route(client, model_id, taken):
    client.post("/predict", files=files("red"))
    client.post("/predict", files=files("red"), data={"model_id": "nope123"})
    text = client.get("/metrics").text
    assert 'finetune_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'finetune_http_requests_total{method="POST",route="/predict",status="404"} 1.0' in text
    assert re.search(r"^finetune_predictions_total 1\.0$", text, re.M)
    assert len(taken) == 2


def test_a_body_over_the_fast_paths_size_goes_to_the_route(client, model_id, taken, monkeypatch):
    monkeypatch.setattr(predict_fast_path, "FAST_PATH_MAX_BYTES", 100)
    response = client.post("/predict", files=files("blue"))
    assert response.status_code == 200 and json.loads(response.content)["results"][0]["label"] == "blue"
    assert taken == []


def test_the_key_check_comes_before_the_fast_path(settings, model_id, taken):  # noqa: F811
    keyed = settings.model_copy(update={"api_keys": "alpha-key"})
    with TestClient(create_app(keyed, enqueue=Recorder())) as client:
        assert client.post("/predict", files=files("red")).status_code == 401
        answered = client.post("/predict", files=files("red"), headers={"X-API-Key": "alpha-key"})
        assert answered.status_code == 200
    assert taken == [["red.png"]]
