"""Serving a model trained by a real job, over real HTTP: the same probabilities as `finetune predict`
and the Python Predictor; micro-batching that never swaps rows between concurrent requests; a deleted
model gone at once from the API that deleted it and, soon after, from a second API process; an API of
two processes counting and forgetting as one."""

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
import psutil
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

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
    predict_status,
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
    """A second API (one process) on the live service's Redis and stores: one forward pass at a time, and a
    batch waits up to 200 ms for requests whose images are still being decoded."""
    with live_service.extra_api(
        tmp_path_factory.mktemp("batching-api"), API_WORKERS="1", PREDICT_CONCURRENCY="1", PREDICT_MAX_WAIT_MS="200"
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


@pytest.fixture(scope="module")
def two_process_api(live_service, tmp_path_factory):
    """`python -m app.server` with API_WORKERS=2 on the live service's Redis and stores; its two
    processes, and the folder their Prometheus values live in."""
    with live_service.extra_api(tmp_path_factory.mktemp("two-process-api"), API_WORKERS="2") as client:
        processes = [
            child
            for child in psutil.Process(client.process.pid).children(recursive=True)
            if "multiprocessing.spawn" in " ".join(child.cmdline())
        ]
        client.processes = processes
        client.metrics_dir = Path(processes[0].environ()["PROMETHEUS_MULTIPROC_DIR"]) if processes else None
        yield client


def metric_value(client: httpx.Client, name: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, text[-2000:]
    return float(found.group(1))


def predictions_by_process(metrics_dir: Path, tmp_path: Path) -> dict[int, float]:
    """Images each API process counted: its own counter file read alone (prometheus_client's collector on a
    folder holding only that file)."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        alone = tmp_path / path.stem
        alone.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[int(path.stem.split("_")[-1])] = registry.get_sample_value("finetune_predictions_total") or 0.0
    return counts


def test_two_api_processes_count_as_one_in_metrics(two_process_api, learned, tmp_path):
    """16 requests of 2 images from 4 clients at once: both processes answer some, and GET /metrics,
    whichever process answers it, counts all 32 images."""
    assert len(two_process_api.processes) == 2, two_process_api.processes
    post_predict(two_process_api, learned.model_id, images(1, seed=20))
    before = metric_value(two_process_api, "finetune_predictions_total")
    by_process_before = predictions_by_process(two_process_api.metrics_dir, tmp_path / "before")
    pairs = [images(2, seed=30 + i) for i in range(16)]
    errors: list[BaseException] = []

    def send(chunk: list) -> None:
        try:
            with httpx.Client(base_url=two_process_api.base_url, timeout=120) as own:
                for files in chunk:
                    post_predict(own, learned.model_id, files)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=send, args=(pairs[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)  # a hang guard
    assert not errors, errors
    for _ in range(4):  # the scrape lands on either process: each sums both
        assert metric_value(two_process_api, "finetune_predictions_total") - before == 32
    by_process = predictions_by_process(two_process_api.metrics_dir, tmp_path / "after")
    assert sum(by_process.values()) - sum(by_process_before.values()) == 32
    assert set(by_process) == {process.pid for process in two_process_api.processes}


def test_an_alias_moved_and_a_model_deleted_through_one_api_process_are_seen_by_both_at_once(
    two_process_api, learned, live_service, tmp_path
):
    """Both processes have served the alias (new connections until each has: the kernel hands them out,
    so each connection stays with one process). The alias moved to a copy of the model: every request,
    whichever process takes it, gets the copy at once; the copy deleted (with its alias): every request
    is 404 at once. Neither process trusts for its revalidation second what it confirmed before."""
    copy_id = new_id()
    copy = live_service.model_dir / copy_id
    shutil.copytree(learned.folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "id": copy_id}))
    alias = f"both-{copy_id[:8]}"
    assert two_process_api.put(f"/aliases/{alias}", json={"model_id": learned.model_id}).status_code == 200
    image = make_image_bytes("red", 40, seed=4)
    files = [("red.png", image)]
    clients: list[httpx.Client] = []
    try:
        before = predictions_by_process(two_process_api.metrics_dir, tmp_path / "before")
        served_by: set[int] = set()
        while len(served_by) < 2 and len(clients) < 100:  # a hang guard, not a bound
            clients.append(httpx.Client(base_url=two_process_api.base_url, timeout=120))
            assert post_predict(clients[-1], alias, files)["model_id"] == learned.model_id
            now = predictions_by_process(two_process_api.metrics_dir, tmp_path / str(len(clients)))
            served_by = {pid for pid, count in now.items() if count > before.get(pid, 0.0)}
        assert len(served_by) == 2, f"{len(clients)} connections all went to one process"
        for own in clients:  # both processes confirmed the alias and the copy within the last second
            assert post_predict(own, alias, files)["model_id"] == learned.model_id
            assert predict_status(own, copy_id, image) == 200

        assert clients[0].put(f"/aliases/{alias}", json={"model_id": copy_id}).status_code == 200
        assert [post_predict(own, alias, files)["model_id"] for own in clients] == [copy_id] * len(clients)

        assert clients[0].delete(f"/models/{copy_id}", params={"force": "true"}).status_code == 204
        assert [predict_status(own, copy_id, image) for own in clients] == [404] * len(clients)
        assert [predict_status(own, alias, image) for own in clients] == [404] * len(clients)
    finally:
        for own in clients:
            own.close()
