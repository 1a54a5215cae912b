"""Issue 15's training options over real HTTP with a real worker, Redis and API: a warm start from a
model whose backbone or image size differs is refused at POST /jobs naming the mismatch, an unknown init
model is a 404, class weights naming unknown classes a 422; a warm start with an added class and early
stopping trains, its manifest names the model it started from and its history where it stopped."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.helpers import learnable_spec, make_image_bytes
from tests.integration.reliability_support import submit_job, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def three_colours_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(("red", "blue", "lime")):
            for n in range(8):
                archive.writestr(f"{colour}/{n}.png", make_image_bytes(colour, 40, seed=index * 100 + n))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def three_colours(client) -> dict:
    response = client.post("/datasets", files={"file": ("three.zip", three_colours_archive(), "application/zip")})
    assert response.status_code == 201, response.text
    return response.json()


def jobs_count(client) -> int:
    return client.get("/jobs").json()["count"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"image_size": 64}, "image_size 64"),
        ({"backbone": "mobilenet", "alpha": 0.25}, "backbone 'mobilenet'"),
        ({"head": {"units": 16, "dropout": 0.0}}, "head.units 16"),
    ],
)
def test_a_warm_start_that_does_not_fit_is_refused_naming_the_mismatch(client, baseline, three_colours, change, named):
    before = jobs_count(client)
    spec = learnable_spec(three_colours["id"], init_model_id=baseline.model["id"], **change)
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert named in response.text and baseline.model["id"] in response.text
    assert jobs_count(client) == before


def test_a_warm_start_from_an_unknown_model_is_not_found(client, three_colours):
    response = client.post("/jobs", json=learnable_spec(three_colours["id"], init_model_id="nosuchmodel"))
    assert response.status_code == 404, response.text
    assert "nosuchmodel" in response.text


def test_class_weights_naming_unknown_classes_are_refused(client, three_colours):
    response = client.post("/jobs", json=learnable_spec(three_colours["id"], class_weight={"red": 2.0, "teal": 1.0}))
    assert response.status_code == 422, response.text
    assert "teal" in response.text


def test_a_warm_start_with_an_added_class_and_early_stopping_trains(client, live_service, baseline, three_colours):
    warmup = {
        "epochs": 30,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "early_stopping": {"monitor": "val_accuracy", "patience": 2},
        "schedule": {"kind": "cosine", "min_lr": 0.001},
    }
    spec = learnable_spec(
        three_colours["id"], init_model_id=baseline.model["id"], warmup=warmup, class_weight="balanced"
    )
    job = wait_for_job(client, submit_job(client, spec)["id"], diagnostics=lambda: live_service.worker.log_tail(60))
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0
    rows = job["history"]
    assert len(rows) < 30 and rows[-1]["stopped_early"] is True
    assert 1 <= rows[-1]["kept_epoch"] <= len(rows) - 2
    assert rows[0]["learning_rate"] == pytest.approx(0.01) and rows[-1]["learning_rate"] < 0.01
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["init_model_id"] == baseline.model["id"]
    assert model["classes"] == ["blue", "lime", "red"]
    assert model["spec"]["class_weight"] == "balanced"
