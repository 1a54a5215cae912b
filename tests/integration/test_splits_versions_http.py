"""Given splits, a test set and dataset versions over real HTTP, with a real worker training the jobs:
a train/val/test archive keeps its splits and the model's final metrics come from its test split;
differing class sets are refused naming the classes; a version made by moving two files trains and
leaves its parent as it was."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from tests.helpers import make_image_bytes
from tests.integration.reliability_support import (
    assert_baseline_intact,
    submit_job,
    tiny_spec,
    upload_archive,
    wait_for_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
COLOURS = ("blue", "red")


def split_archive(layout: dict[str, dict[str, int]], *, wrapper: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split_index, (split, classes) in enumerate(layout.items()):
            for index, (colour, count) in enumerate(classes.items()):
                for n in range(count):
                    image = make_image_bytes(colour, 40, seed=split_index * 1000 + index * 100 + n)
                    archive.writestr(f"{wrapper}{split}/{colour}/{colour}_{n}.png", image)
    return buffer.getvalue()


def files_of(data_dir: Path, dataset_id: str) -> dict[str, bytes]:
    root = data_dir / dataset_id
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_train_val_test_archive_keeps_its_splits_and_the_final_metrics_come_from_test(client):
    layout = {
        "train": {"blue": 6, "red": 6},
        "val": {"blue": 3, "red": 2},
        "test": {"blue": 4, "red": 5},
    }
    response = upload_archive(client, "splits.zip", split_archive(layout, wrapper="animals/"))
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["splits"] == {
        "train": {"blue": 6, "red": 6},
        "validation": {"blue": 3, "red": 2},
        "test": {"blue": 4, "red": 5},
    }
    job = wait_for_job(client, submit_job(client, tiny_spec(dataset["id"], warmup=1))["id"])
    assert job["status"] == "succeeded", job
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["metrics_split"] == "test" and model["figure_splits"]["metrics"] == "test"
    assert model["figure_splits"]["validation_metrics"] == "validation"
    assert (model["num_train"], model["num_validation"], model["num_test"]) == (12, 5, 9)
    assert sum(map(sum, model["metrics"]["confusion_matrix"])) == 9
    assert sum(map(sum, model["validation_metrics"]["confusion_matrix"])) == 5
    samples = client.get(f"/models/{model['id']}/evaluation/samples", params={"limit": 50}).json()
    assert samples["count"] == 9 and all(row["file"].startswith("test/") for row in samples["data"])
    image = client.get(samples["data"][0]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert model["figure_splits"]["thresholds"] == "validation"
    response = client.put(f"/models/{model['id']}/thresholds", json={"target_precision": 0.5})
    assert response.status_code == 200, response.text
    assert client.get(f"/models/{model['id']}").json()["figure_splits"]["thresholds"] == "test"  # held-out rows
    refused = client.post("/jobs", json={**tiny_spec(dataset["id"]), "test_split": 0.2})
    assert refused.status_code == 422 and "has its own splits" in refused.text


def test_splits_with_different_class_sets_are_refused_naming_the_classes(client):
    layout = {"train": {"blue": 2, "red": 2, "green": 2}, "validation": {"blue": 1, "red": 1}, "test": {"blue": 1}}
    response = upload_archive(client, "uneven.zip", split_archive(layout))
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "validation/ lacks green" in detail and "test/ lacks green, red" in detail


def test_a_version_made_by_moving_two_files_trains_and_its_parent_is_unchanged(client, live_service):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(COLOURS):
            for n in range(8):
                archive.writestr(f"{colour}/{colour}_{n}.png", make_image_bytes(colour, 40, seed=index * 100 + n))
    response = upload_archive(client, "flat.zip", buffer.getvalue())
    assert response.status_code == 201, response.text
    parent = response.json()
    data_dir = Path(live_service.data_dir)
    parent_files = files_of(data_dir, parent["id"])
    parent_job = wait_for_job(client, submit_job(client, tiny_spec(parent["id"]))["id"])
    assert parent_job["status"] == "succeeded", parent_job

    edits = {"move": [{"path": "red/red_0.png", "to": "blue"}, {"path": "blue/blue_1.png", "to": "red"}]}
    response = client.post(f"/datasets/{parent['id']}/versions", json=edits)
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["parent_id"] == parent["id"] and version["change"] == {"added": 0, "moved": 2, "removed": 0}
    assert version["counts"] == {"blue": 8, "red": 8}
    assert client.get(f"/datasets/{parent['id']}").json()["children"] == [version["id"]]
    assert client.get(f"/datasets/{version['id']}/files/blue/red_0.png").content == parent_files["images/red/red_0.png"]

    job = wait_for_job(client, submit_job(client, tiny_spec(version["id"], test_split=0.25))["id"])
    assert job["status"] == "succeeded", job
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["dataset_id"] == version["id"] and model["metrics_split"] == "test" and model["num_test"] == 4

    assert files_of(data_dir, parent["id"]) == parent_files  # same files, same record bytes
    assert client.get(f"/models/{parent_job['model_id']}").json()["dataset_id"] == parent["id"]
    assert client.get(f"/jobs/{parent_job['id']}").json()["dataset_id"] == parent["id"]


def test_bad_version_requests_name_what_is_wrong(client, baseline):
    dataset_id = baseline.dataset["id"]
    unknown = client.post("/datasets/nosuchdataset/versions", json={"remove": ["red/x.png"]})
    assert unknown.status_code == 404
    bad = client.post(
        f"/datasets/{dataset_id}/versions",
        json={"move": [{"path": "../etc/x.png", "to": "red"}], "remove": ["/abs.png"]},
    )
    assert bad.status_code == 400 and "'../etc/x.png'" in bad.text and "'/abs.png': an absolute path" in bad.text
    assert client.post(f"/datasets/{dataset_id}/versions", json={}).status_code == 422
    assert client.post(f"/datasets/{dataset_id}/versions", json={"remove": [], "extra": 1}).status_code == 422
    assert_baseline_intact(client, baseline)
