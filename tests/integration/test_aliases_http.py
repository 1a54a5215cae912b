"""Aliases over real HTTP with a real worker, Redis and API: /predict by alias and by default follows a
moved alias (in this API and in a second API process), aliases outlive Redis, a model an alias points
to can't be deleted by accident, and a job's `publish` gate moves an alias or says why not."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.helpers import make_image_bytes
from tests.integration.reliability_support import probe_images, submit_job, tiny_spec, wait_for, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MOVE_SEEN_WITHIN_S = 60  # a hang guard: the documented delay is about a second


def upload(client, archive: bytes, name: str) -> dict:
    response = client.post("/datasets", files={"file": (f"{name}.zip", archive, "application/zip")})
    assert response.status_code == 201, response.text
    return response.json()


def colours_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(("red", "blue")):
            for n in range(8):
                archive.writestr(f"{colour}/{n}.png", make_image_bytes(colour, 40, seed=index * 100 + n))
    return buffer.getvalue()


def unlearnable_archive() -> bytes:
    """Two classes of the same red noise: no model gets every one of its 20 held-out images right."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, name in enumerate(("first", "second")):
            for n in range(40):
                archive.writestr(f"{name}/{n}.png", make_image_bytes("red", 40, seed=index * 1000 + n))
    return buffer.getvalue()


def train(client, dataset_id: str, **spec) -> dict:
    job = wait_for_job(client, submit_job(client, tiny_spec(dataset_id, **spec))["id"])
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def two_models(client):
    dataset = upload(client, colours_archive(), "colours")
    return [train(client, dataset["id"])["model_id"] for _ in range(2)]


PROBE = ("file", (probe_images()[0][0], probe_images()[0][1], "image/png"))


def answering_model(client, ref: str | None) -> str:
    data = {"top_k": "1"} if ref is None else {"model_id": ref, "top_k": "1"}
    response = client.post("/predict", data=data, files=[PROBE])
    assert response.status_code == 200, response.text
    return response.json()["model_id"]


def test_predict_by_alias_and_by_default_follows_a_moved_alias_in_every_api(client, live_service, two_models, tmp_path):
    first, second = two_models
    response = client.put("/aliases/production", json={"model_id": first})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["model_id"]) == ("production", first)
    assert [h["model_id"] for h in body["history"]] == [first]
    assert answering_model(client, "production") == first
    assert client.put("/aliases/default", json={"model_id": "production"}).json()["model_id"] == first
    try:
        assert answering_model(client, None) == first  # no model_id: the alias `default`, not the newest model
    finally:  # other modules on this live service expect the newest model to be the default
        assert client.delete("/aliases/default").status_code == 204

    with live_service.extra_api(tmp_path) as other:
        wait_for(lambda: other.get("/healthz").status_code == 200, timeout=120, what="the second API")
        assert answering_model(other, "production") == first
        moved = client.put("/aliases/production", json={"model_id": second}).json()
        assert [h["model_id"] for h in moved["history"]] == [first, second]
        for api in (client, other):
            wait_for(
                lambda api=api: answering_model(api, "production") == second,
                timeout=MOVE_SEEN_WITHIN_S,
                what="the moved alias to be served",
            )
        rolled = other.post("/aliases/production/rollback")
        assert rolled.status_code == 200 and rolled.json()["model_id"] == first
        wait_for(
            lambda: answering_model(client, "production") == first,
            timeout=MOVE_SEEN_WITHIN_S,
            what="the rolled-back alias to be served",
        )
    listed = client.get("/aliases").json()
    assert listed["count"] == len(listed["data"]) and "production" in {a["name"] for a in listed["data"]}


def test_aliases_do_not_depend_on_redis(client, redis_server, two_models):
    first, second = two_models
    client.put("/aliases/stable", json={"model_id": second})
    redis_server.stop()
    try:
        assert client.get("/aliases/stable").json()["model_id"] == second
        assert answering_model(client, "stable") == second
    finally:
        redis_server.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120, what="Redis back")
    assert client.get("/aliases/stable").json()["model_id"] == second


def test_bad_names_unknown_models_and_shadowing_are_refused(client, two_models):
    first, second = two_models
    assert client.put("/aliases/Bad-Name", json={"model_id": first}).status_code == 422
    assert client.put("/aliases/" + "a" * 41, json={"model_id": first}).status_code == 422
    assert client.put("/aliases/staging", json={"model_id": "0000000000000000"}).status_code == 404
    assert client.put("/aliases/staging", json={}).status_code == 422
    assert client.get("/aliases/never-set").status_code == 404
    assert client.post("/aliases/never-set/rollback").status_code == 404
    assert client.put("/aliases/fresh", json={"model_id": first}).status_code == 200
    assert client.post("/aliases/fresh/rollback").status_code == 409  # nothing to roll back to
    assert client.delete("/aliases/fresh").status_code == 204
    assert client.get("/aliases/fresh").status_code == 404
    if first[0].isalpha():  # a model id that is also a valid alias name must not be shadowed
        assert client.put(f"/aliases/{first}", json={"model_id": second}).status_code == 409


def test_a_model_an_alias_points_to_is_deleted_only_with_force(client, two_models):
    dataset = upload(client, colours_archive(), "doomed")
    doomed = train(client, dataset["id"])["model_id"]
    client.put("/aliases/doomed-a", json={"model_id": doomed})
    client.put("/aliases/doomed-b", json={"model_id": doomed})
    refused = client.delete(f"/models/{doomed}")
    assert refused.status_code == 409
    assert "doomed-a" in refused.json()["detail"] and "doomed-b" in refused.json()["detail"]
    assert client.get(f"/models/{doomed}").status_code == 200
    assert client.delete(f"/models/{doomed}", params={"force": "true"}).status_code == 204
    assert client.get(f"/models/{doomed}").status_code == 404
    assert client.get("/aliases/doomed-a").status_code == 404 and client.get("/aliases/doomed-b").status_code == 404
    assert (
        client.post(
            "/predict",
            data={"model_id": "doomed-a"},
            files=[PROBE],
        ).status_code
        == 404
    )


def test_a_job_publishes_itself_only_when_it_passes_its_gate(client):
    colours = upload(client, colours_archive(), "publish-ok")
    passed = train(client, colours["id"], publish={"alias": "candidate", "min_accuracy": 0.0})
    assert passed["publication"]["published"] is True, passed["publication"]
    assert client.get("/aliases/candidate").json()["model_id"] == passed["model_id"]

    noise = upload(client, unlearnable_archive(), "publish-refused")
    refused = train(client, noise["id"], publish={"alias": "candidate", "min_accuracy": 1.0})
    publication = refused["publication"]
    assert publication["published"] is False and publication["accuracy"] < 1.0
    assert publication["reason"] == f"accuracy {publication['accuracy']:.4g} < 1"
    assert client.get("/aliases/candidate").json()["model_id"] == passed["model_id"]  # unmoved


def test_a_publish_spec_is_validated(client):
    dataset = upload(client, colours_archive(), "publish-bad")
    for publish in (
        {"alias": "Bad"},
        {"alias": "ok", "min_accuracy": 1.5},
        {"min_accuracy": 0.5},
        {"alias": "ok", "x": 1},
    ):
        response = client.post("/jobs", json=tiny_spec(dataset["id"], publish=publish))
        assert response.status_code == 422, (publish, response.text)
