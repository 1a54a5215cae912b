"""Shared by the reliability tests (bad input, security, faults, load): tiny jobs, waiting, file-tree
snapshots, a private stack of processes, and the "earlier work is untouched" baseline."""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from finetune.launcher import ManagedProcess, free_port, start_api, start_redis, start_worker
from tests.helpers import (
    assert_same_probabilities,
    learnable_spec,
    make_image_bytes,
    reference_results,
    top_label,
)
from tests.processes import isolated_env

FINAL = frozenset({"succeeded", "failed", "cancelled"})
JOB_TIMEOUT_S = 420.0  # a tiny job on a busy 2-core CPU, TensorFlow start-up included


def tiny_spec(
    dataset_id: str, *, warmup: int = 1, finetune: int | None = None, image_size: int = 32, **overrides
) -> dict:
    """A MobileNet-0.25 job on random weights: seconds per epoch on a CPU."""
    spec = {
        "dataset_id": dataset_id,
        "backbone": "mobilenet",
        "alpha": 0.25,
        "weights": "none",
        "image_size": image_size,
        "batch_size": 4,
        "head": {"units": 8, "dropout": 0.0},
        "augmentation": None,
        "warmup": {"epochs": warmup},
        "finetune": None if finetune is None else {"epochs": finetune, "unfreeze_from": 50},
    }
    spec.update(overrides)
    return spec


def wait_for(
    predicate: Callable[[], object],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
    diagnostics: Callable[[], str] | None = None,
):
    """Poll `predicate` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diagnostics()}" if diagnostics else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def get_job(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_job(
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict], bool] | None = None,
    *,
    timeout: float = JOB_TIMEOUT_S,
    interval: float = 0.1,
    diagnostics: Callable[[], str] | None = None,
) -> dict:
    """Poll GET /jobs/{id} until `until(job)` (default: a final status); returns that job."""
    until = until or (lambda job: job["status"] in FINAL)
    last: dict = {}

    def check():
        last.update(get_job(client, job_id))
        return dict(last) if until(last) else None

    def describe() -> str:
        text = (
            f"last seen: status={last.get('status')} phase={last.get('phase')} attempts={last.get('attempts')} "
            f"error={last.get('error')}"
        )
        return text + (f"\n{diagnostics()}" if diagnostics else "")

    return wait_for(check, timeout=timeout, interval=interval, what=f"job {job_id}", diagnostics=describe)


def submit_job(client: httpx.Client, spec: dict) -> dict:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    return response.json()


def upload_archive(client: httpx.Client, name: str, data: bytes, *, content_type: str = "application/zip"):
    return client.post("/datasets", files={"file": (name, data, content_type)})


def snapshot(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Every path under `root` (relative) -> its size, -1 for folders. Top-level names in `skip` are left out."""
    root = Path(root)
    tree: dict[str, int] = {}
    if not root.exists():
        return tree
    for folder, dirs, files in os.walk(root):
        relative = Path(folder).relative_to(root)
        if relative.parts and relative.parts[0] in skip:
            dirs[:] = []
            continue
        for name in dirs:
            if not relative.parts and name in skip:
                continue
            tree[(relative / name).as_posix()] = -1
        for name in files:
            if not relative.parts and name in skip:
                continue
            path = Path(folder) / name
            tree[(relative / name).as_posix()] = path.lstat().st_size
    return tree


def tree_diff(before: dict[str, int], after: dict[str, int]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(path for path in set(before) & set(after) if before[path] != after[path])
    return f"added={added[:20]} removed={removed[:20]} changed={changed[:20]}"


PROBE_COLOURS = ("red", "blue")


def probe_images() -> list[tuple[str, bytes]]:
    """One image of each class, none of them in the training set (another seed)."""
    return [(f"probe-{colour}.png", make_image_bytes(colour, 40, seed=99)) for colour in PROBE_COLOURS]


def predict(client: httpx.Client, model_id: str, images: list[tuple[str, bytes]], **headers) -> dict:
    response = client.post(
        "/predict",
        data={"model_id": model_id, "top_k": "2"},
        files=[("file", (name, data, "image/png")) for name, data in images],
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class Baseline:
    """A dataset uploaded and a model trained before a module's tests: they must stay as they were.
    The model has learnt the colours (`learnable_spec`): each probe image gets its own class."""

    dataset: dict
    job: dict
    model: dict
    predictions: dict
    data_dir: Path
    model_dir: Path
    dataset_files: dict[str, int] = field(default_factory=dict)
    model_files: dict[str, int] = field(default_factory=dict)
    images: list[tuple[str, bytes]] = field(default_factory=probe_images)


def make_baseline(
    client: httpx.Client,
    archive: Path,
    *,
    data_dir: Path,
    model_dir: Path,
    diagnostics: Callable[[], str] | None = None,
) -> Baseline:
    response = upload_archive(client, "baseline.zip", Path(archive).read_bytes())
    assert response.status_code == 201, response.text
    dataset = response.json()
    job = submit_job(client, learnable_spec(dataset["id"]))
    job = wait_for_job(client, job["id"], diagnostics=diagnostics)
    assert job["status"] == "succeeded", job
    model = client.get(f"/models/{job['model_id']}").json()
    images = probe_images()
    predictions = predict(client, model["id"], images)
    assert [top_label(result) for result in predictions["results"]] == list(PROBE_COLOURS), predictions
    assert_same_probabilities(predictions["results"], reference_results(model_dir, model["id"], images))
    baseline = Baseline(
        dataset=dataset,
        job=job,
        model=model,
        predictions=predictions,
        data_dir=Path(data_dir),
        model_dir=Path(model_dir),
        images=images,
    )
    baseline.dataset_files = snapshot(baseline.data_dir / dataset["id"])
    baseline.model_files = snapshot(baseline.model_dir / model["id"])
    return baseline


def assert_baseline_intact(client: httpx.Client, baseline: Baseline, **headers) -> None:
    """The baseline dataset and model are still listed, unchanged on disk, and predict the same."""
    datasets = client.get("/datasets", headers=headers)
    assert datasets.status_code == 200, datasets.text
    assert baseline.dataset["id"] in [d["id"] for d in datasets.json()["data"]]
    assert client.get(f"/datasets/{baseline.dataset['id']}", headers=headers).json() == baseline.dataset
    models = client.get("/models", headers=headers)
    assert baseline.model["id"] in [m["id"] for m in models.json()["data"]]
    assert client.get(f"/models/{baseline.model['id']}", headers=headers).json() == baseline.model
    job = client.get(f"/jobs/{baseline.job['id']}", headers=headers).json()
    assert (job["status"], job["model_id"], job["history"]) == (
        "succeeded",
        baseline.model["id"],
        baseline.job["history"],
    )
    assert snapshot(baseline.data_dir / baseline.dataset["id"]) == baseline.dataset_files
    assert snapshot(baseline.model_dir / baseline.model["id"]) == baseline.model_files
    again = predict(client, baseline.model["id"], baseline.images, **headers)
    assert again["model_id"] == baseline.predictions["model_id"]
    for now, then in zip(again["results"], baseline.predictions["results"]):
        assert now["filename"] == then["filename"]
        assert [p["label"] for p in now["predictions"]] == [p["label"] for p in then["predictions"]]
        for p_now, p_then in zip(now["predictions"], then["predictions"]):
            assert math.isclose(p_now["probability"], p_then["probability"], abs_tol=1e-5)


def child_env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    env = dict(base)
    env.update({key: str(value) for key, value in overrides.items()})
    return env


def clean_env(root: Path, redis_url: str) -> dict[str, str]:
    """Like the session's `service_env`, for a private stack under `root`."""
    return isolated_env(root, REDIS_URL=redis_url, JOB_STALE_AFTER_S="10", HEARTBEAT_S="1")


class Stack:
    """A private Redis (append-only file), API and workers, so faults here cannot disturb other tests."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.redis_port = free_port()
        self.redis_dir = self.root / "redis"
        self.redis: ManagedProcess | None = None
        self.start_redis()
        self.env = clean_env(self.root, f"redis://127.0.0.1:{self.redis_port}/0")
        self.data_dir = Path(self.env["DATA_DIR"])
        self.model_dir = Path(self.env["MODEL_DIR"])
        self.cache_dir = Path(self.env["CACHE_DIR"])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: ManagedProcess | None = None
        self.apis: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []

    def start_redis(self) -> None:
        self.redis = start_redis(port=self.redis_port, data_dir=self.redis_dir)

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def start_api(self, **env_overrides) -> ManagedProcess:
        self.api = start_api(
            env=child_env(self.env, **env_overrides),
            port=self.port,
            log_path=self.root / "logs" / f"api-{len(self.apis)}.log",
        )
        self.apis.append(self.api)
        return self.api

    def start_worker(self, **env_overrides) -> ManagedProcess:
        worker = start_worker(
            env=child_env(self.env, **env_overrides), log_path=self.root / "logs" / f"worker-{len(self.workers)}.log"
        )
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[ManagedProcess]:
        return [worker for worker in self.workers if worker.is_alive()]

    def logs(self, lines: int = 40) -> str:
        parts = []
        for process in [*self.apis[-1:], *self.workers]:
            parts.append(f"--- {process.log_path} (alive={process.is_alive()})\n{process.log_tail(lines)}")
        return "\n".join(parts)

    def stop(self) -> None:
        for process in [*self.apis, *self.workers]:
            process.stop()
        self.stop_redis()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def predict_status(client: httpx.Client, model_id: str, image: bytes) -> int:
    files = [("file", ("probe.png", image, "image/png"))]
    return client.post("/predict", data={"model_id": model_id}, files=files).status_code


def assert_deletion_is_seen(first: httpx.Client, second: httpx.Client, model_id: str, image: bytes) -> float:
    """Both APIs have `model_id` loaded; DELETE /models/{id} through `first` answers 204, after which
    /predict with that id is 404 in `first` at once, and in `second` (another process, whose cache asks
    the store again at most every second, as documented) once it has looked. Returns how long
    `second` took, for the log only: the wait is a hang guard, not a bound."""
    for client in (first, second):
        assert predict_status(client, model_id, image) == 200
    response = first.delete(f"/models/{model_id}")
    assert response.status_code == 204, response.text
    deleted = time.monotonic()
    assert predict_status(first, model_id, image) == 404
    assert first.get(f"/models/{model_id}").status_code == 404
    assert model_id not in [m["id"] for m in first.get("/models").json()["data"]]
    wait_for(
        lambda: predict_status(second, model_id, image) == 404,
        timeout=120,
        interval=0.05,
        what=f"/predict of deleted model {model_id} to be 404 in the second API",
    )
    seconds = time.monotonic() - deleted
    assert predict_status(second, model_id, image) == 404  # and it stays gone
    assert second.get(f"/models/{model_id}").status_code == 404
    assert first.delete(f"/models/{model_id}").status_code == 404
    print(f"model deletion seen by the second API {seconds:.2f} s after the 204")
    return seconds
