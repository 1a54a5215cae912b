"""Serving a model trained by a real job, over real HTTP: the same probabilities as `finetune predict`
and the Python Predictor; micro-batching that never swaps rows between concurrent requests; a deleted
model gone at once from the API that deleted it and, soon after, from a second API process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from finetune.ids import new_id
from tests.helpers import (
    assert_same_probabilities,
    learnable_spec,
    make_image_bytes,
    probabilities,
    reference_results,
    top_label,
)
from tests.integration.reliability_support import (
    assert_deletion_is_seen,
    submit_job,
    upload_archive,
    wait_for_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 8
FILES_PER_REQUEST = 3


@pytest.fixture(scope="module")
def learned(client, live_service, tiny_dataset_zip):
    """A model that learnt red from blue, trained by a real job of the live service's worker."""
    dataset = upload_archive(client, "tiny.zip", tiny_dataset_zip.read_bytes())
    assert dataset.status_code == 201, dataset.text
    job = submit_job(client, learnable_spec(dataset.json()["id"]))
    done = wait_for_job(client, job["id"], diagnostics=lambda: live_service.worker.log_tail(60))
    assert done["status"] == "succeeded", done
    return SimpleNamespace(model_id=done["model_id"], folder=live_service.model_dir / done["model_id"])


@pytest.fixture(scope="module")
def batching_api(live_service, tmp_path_factory):
    """A second API process on the live service's Redis and stores: one forward pass at a time, and a
    batch waits up to 200 ms for requests whose images are still being decoded."""
    with live_service.extra_api(
        tmp_path_factory.mktemp("batching-api"), PREDICT_CONCURRENCY="1", PREDICT_MAX_WAIT_MS="200"
    ) as client:
        yield client


def images(count: int, *, seed: int) -> list[tuple[str, bytes]]:
    """`count` different images along a red-to-blue ramp (each with its own noise): each gets its own
    probabilities from a model that learnt red from blue."""
    ramp = np.linspace(0.0, 1.0, count)
    return [
        (f"ramp-{seed}-{i}.png", make_image_bytes((int(255 * (1 - t)), 0, int(255 * t)), 40, seed=seed * 100 + i))
        for i, t in enumerate(ramp)
    ]


def post_predict(client: httpx.Client, model_id: str, files: list[tuple[str, bytes]], top_k: int = 2) -> dict:
    response = client.post(
        "/predict",
        data={"model_id": model_id, "top_k": str(top_k)},
        files=[("file", (name, data, "image/png")) for name, data in files],
    )
    assert response.status_code == 200, response.text
    return response.json()


def batch_histogram(client: httpx.Client) -> dict[str, float]:
    """`finetune_predict_batch_images` from /metrics: {"count": n, "le=4.0": n, ...}."""
    text = client.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if match := re.match(r'finetune_predict_batch_images_bucket\{le="([^"]+)"\} (\S+)$', line):
            found[f"le={match.group(1)}"] = float(match.group(2))
        elif match := re.match(r"finetune_predict_batch_images_count (\S+)$", line):
            found["count"] = float(match.group(1))
    assert "count" in found, text[-2000:]
    return found


def test_http_and_finetune_predict_give_the_same_probabilities(client, learned, tmp_path):
    """Train-to-serve agreement: one model, the same files, through /predict and through the CLI."""
    files = [("red.png", make_image_bytes("red", 40, seed=5)), ("blue.png", make_image_bytes("blue", 40, seed=6))]
    files += images(4, seed=1)
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    served = post_predict(client, learned.model_id, files)
    assert served["model_id"] == learned.model_id
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.cli",
            "predict",
            str(learned.folder),
            *[str(tmp_path / name) for name, _ in files],
            "--top-k",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=600,  # a hang guard
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = json.loads(completed.stdout)
    assert printed["model_id"] == learned.model_id
    assert [Path(r["filename"]).name for r in printed["results"]] == [name for name, _ in files]
    for result in printed["results"]:
        result["filename"] = Path(result["filename"]).name
    assert_same_probabilities(served["results"], printed["results"])
    assert [top_label(r) for r in served["results"][:2]] == ["red", "blue"]


def test_concurrent_requests_each_get_their_own_rows(batching_api, learned):
    """8 concurrent requests of 3 different images each: every image comes back with its own
    probabilities (those of the Python Predictor), and some forward passes held images of several
    requests (a batch of more than 3 images in the histogram)."""
    every_image = images(REQUESTS * FILES_PER_REQUEST, seed=10)
    requests = [every_image[r::REQUESTS] for r in range(REQUESTS)]  # each request spans the ramp
    expected = {r["filename"]: r for r in reference_results(learned.folder.parent, learned.model_id, every_image)}
    rows = np.array([[probabilities(expected[name])[c] for c in ("blue", "red")] for name, _ in every_image])
    gaps = np.abs(rows[:, None, 0] - rows[None, :, 0]) + np.eye(len(rows))
    assert gaps.min() > 1e-4, "two images share their probabilities: a swap could go unseen"

    post_predict(batching_api, learned.model_id, requests[0][:1])  # loaded before the histogram is read
    before = batch_histogram(batching_api)
    answers: list[dict | None] = [None] * REQUESTS
    errors: list[BaseException] = []
    start = threading.Barrier(REQUESTS, timeout=120)  # a hang guard

    def send(index: int) -> None:
        try:
            with httpx.Client(base_url=batching_api.base_url, timeout=120) as own:
                start.wait()
                answers[index] = post_predict(own, learned.model_id, requests[index])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)  # a hang guard
    assert not errors, errors
    for request, answer in zip(requests, answers):
        assert_same_probabilities(answer["results"], [expected[name] for name, _ in request])

    after = batch_histogram(batching_api)
    passes = after["count"] - before["count"]
    more_than_one = passes - (after["le=1.0"] - before["le=1.0"])
    more_than_one_request = passes - (after["le=4.0"] - before["le=4.0"])  # a request holds 3 images
    print(f"micro-batching: {REQUESTS} requests in {passes:.0f} forward passes, histogram {after}")
    assert more_than_one > 0
    assert more_than_one_request > 0, (before, after)


def test_a_deleted_model_is_404_at_once_here_and_soon_in_a_second_api(client, batching_api, learned, live_service):
    """A copy of the learnt model under a new id (the folder copied in the store), deleted through the
    live API; the second API process had it loaded."""
    copy_id = new_id()
    copy = live_service.model_dir / copy_id
    shutil.copytree(learned.folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "id": copy_id}))
    image = make_image_bytes("red", 40, seed=3)
    assert_deletion_is_seen(client, batching_api, copy_id, image)
    assert not copy.exists()
    assert post_predict(client, learned.model_id, [("red.png", image)])["model_id"] == learned.model_id
