"""Evaluation you can act on, over real HTTP with a real worker: curves and thresholds in the manifest,
the held-out images behind every confusion-matrix cell, and /predict abstaining below thresholds."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.helpers import make_image_bytes
from tests.integration.reliability_support import submit_job, tiny_spec, wait_for, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLASSES = ["blue", "red"]


@pytest.fixture(scope="module")
def model(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(CLASSES):
            for n in range(16):
                archive.writestr(f"{colour}/{colour}_{n}.png", make_image_bytes(colour, 40, seed=index * 100 + n))
    response = client.post("/datasets", files={"file": ("eval.zip", buffer.getvalue(), "application/zip")})
    assert response.status_code == 201, response.text
    spec = tiny_spec(response.json()["id"], thresholds={"target_precision": 0.75})
    job = wait_for_job(client, submit_job(client, spec)["id"])
    assert job["status"] == "succeeded", job
    return client.get(f"/models/{job['model_id']}").json()


def probe(colour: str, seed: int = 5) -> tuple[str, tuple[str, bytes, str]]:
    return ("file", (f"{colour}.png", make_image_bytes(colour, 40, seed=seed), "image/png"))


def test_the_manifest_holds_curves_and_the_picked_thresholds(model):
    curves = model["curves"]
    assert set(curves["per_class"]) == set(CLASSES) and curves["count"] == model["num_validation"] == 8
    for row in curves["per_class"].values():
        assert 0.0 <= row["ap"] <= 1.0 and len(row["pr_curve"]["thresholds"]) >= 1
    assert curves["calibration"]["ece"] is not None and sum(b["count"] for b in curves["calibration"]["bins"]) == 8
    thresholds = model["thresholds"]
    assert thresholds["target_precision"] == 0.75 and set(thresholds["per_class"]) == set(CLASSES)
    for row in thresholds["per_class"].values():
        assert row["threshold"] is None or row["precision"] >= 0.75


def test_every_confusion_matrix_cell_lists_exactly_its_images(client, model):
    matrix = model["metrics"]["confusion_matrix"]
    for i, true in enumerate(CLASSES):
        for j, predicted in enumerate(CLASSES):
            body = client.get(
                f"/models/{model['id']}/evaluation/samples", params={"true": true, "predicted": predicted}
            ).json()
            assert body["count"] == matrix[i][j] == len(body["data"])
            probabilities = [row["probability"] for row in body["data"]]
            assert probabilities == sorted(probabilities, reverse=True)  # most confident first
            for row in body["data"]:
                assert (row["true"], row["predicted"]) == (true, predicted)
                image = client.get(row["url"])
                assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    everything = client.get(f"/models/{model['id']}/evaluation/samples", params={"limit": 3, "offset": 2}).json()
    assert everything["count"] == 8 and len(everything["data"]) == 3


def test_predict_abstains_below_a_threshold_and_never_at_zero(client, model):
    plain = client.post(
        "/predict", data={"model_id": model["id"], "top_k": "2"}, files=[probe("red"), probe("blue")]
    ).json()
    top = max(r["predictions"][0]["probability"] for r in plain["results"])
    assert all(r["abstained"] is (r["label"] is None) for r in plain["results"])
    if top < 1.0:
        above = client.post(
            "/predict",
            data={"model_id": model["id"], "threshold": str(min(1.0, top + 1e-4))},
            files=[probe("red"), probe("blue")],
        ).json()
        assert [(r["label"], r["abstained"]) for r in above["results"]] == [(None, True), (None, True)]
    zero = client.post(
        "/predict", data={"model_id": model["id"], "threshold": "0"}, files=[probe("red"), probe("blue")]
    ).json()
    assert [r["label"] for r in zero["results"]] == [r["predictions"][0]["label"] for r in zero["results"]]
    assert (
        client.post("/predict", data={"model_id": model["id"], "threshold": "1.5"}, files=[probe("red")]).status_code
        == 422
    )


def test_thresholds_set_later_are_measured_and_followed_by_predict(client, model):
    url = f"/models/{model['id']}/thresholds"
    set_ = client.put(url, json={"values": {"red": 1.0, "blue": None}})
    assert set_.status_code == 200, set_.text
    assert set_.json()["per_class"]["blue"]["threshold"] is None and set_.json()["per_class"]["red"]["threshold"] == 1.0
    stored = client.get(f"/models/{model['id']}").json()["thresholds"]["per_class"]
    assert {name: row["threshold"] for name, row in stored.items()} == {"red": 1.0, "blue": None}

    def red_abstains() -> bool:
        result = client.post("/predict", data={"model_id": model["id"]}, files=[probe("red", seed=9)]).json()[
            "results"
        ][0]
        return result["predictions"][0]["label"] != "red" or result["abstained"]

    wait_for(red_abstains, timeout=60, what="the new thresholds to be served")  # hang guard; documented: ~1 s
    again = client.put(url, json={"target_precision": 0.5})
    assert again.status_code == 200 and again.json()["target_precision"] == 0.5
    for bad in ({}, {"target_precision": 0.9, "values": {"red": 0.5}}, {"values": {"red": 2}}, {"target_precision": 0}):
        assert client.put(url, json=bad).status_code == 422, bad
    assert client.put(url, json={"values": {"wolf": 0.5}}).status_code == 422
    assert client.put("/models/0000000000000000/thresholds", json={"target_precision": 0.9}).status_code == 404


def test_explain_returns_a_heatmap_png_of_the_image_or_a_clear_error(client, model):
    from PIL import Image

    url = f"/models/{model['id']}/explain"
    response = client.post(url, files=[probe("red")])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.headers["x-class"] in CLASSES
    assert 0.0 < float(response.headers["x-probability"]) <= 1.0
    assert Image.open(io.BytesIO(response.content)).size == (model["image_size"], model["image_size"])
    chosen = client.post(url, data={"class": "blue"}, files=[probe("red")])
    assert chosen.status_code == 200 and chosen.headers["x-class"] == "blue"
    assert client.post(url, data={"class": "wolf"}, files=[probe("red")]).status_code == 422
    assert client.post(url, files=[("file", ("notes.txt", b"hello there", "text/plain"))]).status_code == 415
    assert client.post("/models/0000000000000000/explain", files=[probe("red")]).status_code == 404
