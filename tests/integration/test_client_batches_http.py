"""The Python client's batch methods against the live API, worker and Redis: a batch over a folder the
client zips (a broken image among them), one over an uploaded dataset, their JSON Lines and CSV results,
and the API's refusals as exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.client import Client, Conflict, NotFound
from finetune.states import JobStatus
from tests.helpers import make_image
from tests.integration.reliability_support import tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLASSES = ("red", "blue")
HANG_GUARD_S = 600


@pytest.fixture(scope="module")
def api(live_service):
    with Client(live_service.url) as client:
        yield client


@pytest.fixture(scope="module")
def model_and_dataset(api, tiny_dataset_zip):
    dataset = api.upload_dataset(tiny_dataset_zip)
    job = api.wait(api.create_job(dataset.id, tiny_spec(dataset.id)).id, timeout=HANG_GUARD_S)
    return job.model_id, dataset


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Images in nested folders (the paths are kept), and one file that is no image."""
    root = tmp_path_factory.mktemp("client-batch") / "photos"
    for index, colour in enumerate(CLASSES):
        (root / "day" / colour).mkdir(parents=True)
        for n in range(3):
            make_image(colour, 40, seed=index * 100 + n).save(root / "day" / colour / f"{n}.png")
    (root / "broken.png").write_bytes(b"not an image at all")
    return root


def test_a_batch_over_a_folder_the_client_zips(api, model_and_dataset, image_folder):
    model_id, _ = model_and_dataset
    sent = []
    batch = api.create_batch(
        archive=image_folder, model=model_id, top_k=2, progress=lambda n, total: sent.append((n, total))
    )
    assert batch.status == JobStatus.QUEUED and batch.model_id == model_id and batch.top_k == 2
    assert sent and sent[-1][0] == sent[-1][1]
    final = api.wait_batch(batch.id, timeout=HANG_GUARD_S, interval=0.2)
    assert final.status == JobStatus.SUCCEEDED, final
    assert batch.id in [b.id for b in api.batches()]

    rows = {row["path"]: row for row in api.batch_results(batch.id)}
    images = sorted(f"day/{colour}/{n}.png" for colour in CLASSES for n in range(3))
    assert sorted(rows) == sorted([*images, "broken.png"])
    assert rows["broken.png"]["error"] and rows["broken.png"]["predictions"] == []
    for path in images:
        assert rows[path]["error"] is None and rows[path]["label"] in CLASSES
        assert len(rows[path]["predictions"]) == 2
    table = api.batch_results_csv(batch.id)
    assert sorted(row["path"] for row in table) == sorted(rows)
    assert {row["path"]: row["label"] for row in table if row["path"] != "broken.png"} == {
        path: rows[path]["label"] for path in images
    }
    with pytest.raises(Conflict) as final_already:
        api.cancel_batch(batch.id)
    assert final_already.value.status_code == 409


def test_a_batch_over_an_uploaded_dataset(api, model_and_dataset, tmp_path):
    model_id, dataset = model_and_dataset
    batch = api.create_batch(dataset_id=dataset.id, model=model_id, top_k=1)
    assert api.wait_batch(batch.id, timeout=HANG_GUARD_S, interval=0.2).status == JobStatus.SUCCEEDED
    rows = list(api.batch_results(batch.id))
    assert len(rows) == dataset.num_images
    assert all(row["label"] in CLASSES and row["error"] is None for row in rows)
    saved = api.download_batch_results(batch.id, tmp_path / "results.csv", format="csv")
    assert len(saved.read_text().splitlines()) == dataset.num_images + 1  # the header


def test_batch_errors(api, model_and_dataset):
    _, dataset = model_and_dataset
    with pytest.raises(NotFound) as missing:
        api.batch("no-such-batch")
    assert missing.value.status_code == 404 and "no-such-batch" in missing.value.detail
    with pytest.raises(NotFound):
        api.create_batch(dataset_id=dataset.id, model="no-such-model")
    with pytest.raises(ValueError):
        api.create_batch(dataset_id=dataset.id, source="s3://bucket/prefix")
