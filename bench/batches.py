"""Batch predictions against the raw batched forward pass of the same model, side by side in one run.

``python -m bench.batches MODEL_DIR MODEL_ID [IMAGES]`` prints one JSON object (``make bench`` runs it
as its `batches` section on the project's model):

- **batch**: a redis-server, a batch record over a folder of IMAGES copies of one 224-px JPEG, and the
  batch runner's own process (``python -m finetune.execution.batch_runner``, what a worker starts) run
  to the end. Its rate is the runner's `images_per_second`: images labelled over the time from the model
  loaded to the last part written (reading, decoding, the forward passes, writing the parts, the
  progress updates), TensorFlow's start-up and the model's load left out as on the raw side.
- **raw**: the same model's ``Predictor.predict_pixels`` on already-decoded images, in forward batches of
  the same size (BATCH_FORWARD_SIZE), TensorFlow's default threads: the ceiling the batch is judged
  against (target: 0.8 of it).

Both sides run ROUNDS times, alternately; the figures are each side's median.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from finetune.launcher import free_port, start_redis
from finetune.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = 2048
ROUNDS = 3


def measure_raw(model_dir: Path, model_id: str, *, images: int, forward_size: int) -> dict:
    """The raw batched forward pass: `images` decoded images in passes of `forward_size` (one warm pass first)."""
    from finetune.ml.predictor import Predictor
    from finetune.stores.models import ModelStore

    store = ModelStore(model_dir)
    predictor = Predictor(store.model_file(model_id), store.get(model_id), max_batch=forward_size)
    predictor.warm_up()
    size = predictor.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    predictor.predict_pixels(pixels[:forward_size])
    started = time.perf_counter()
    predictor.predict_pixels(pixels)
    seconds = time.perf_counter() - started
    return {"images": images, "forward_size": forward_size, "seconds": seconds, "images_per_second": images / seconds}


def _service_env(model_dir: Path, work_dir: Path, redis_url: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update(
        REDIS_URL=redis_url,
        MODEL_DIR=str(Path(model_dir).resolve()),
        DATA_DIR=str(work_dir / "data"),
        CACHE_DIR=str(work_dir / "cache"),
    )
    return env


def _image_folder(folder: Path, image: bytes, images: int) -> Path:
    """`images` copies of one JPEG, 100 to a sub-folder (decoding cost is the JPEG's, not the copy's)."""
    for n in range(images):
        path = folder / f"{n // 100:03d}" / f"{n:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    return folder


def measure_batch(model_dir: Path, model_id: str, image: bytes, work_dir: Path, *, images: int) -> dict:
    """The batch runner's process over `images` images, against a redis-server of its own."""
    from finetune.execution.batch_runner import batch_file_store
    from finetune.stores.batches import BatchStore

    port = free_port()
    redis = start_redis(port=port, data_dir=work_dir / "redis", appendonly=False)
    try:
        env = _service_env(model_dir, work_dir, f"redis://127.0.0.1:{port}/0")
        settings = Settings(**{key.lower(): env[key] for key in ("REDIS_URL", "MODEL_DIR", "DATA_DIR", "CACHE_DIR")})
        batch_id, files = batch_file_store(settings).create_from_location(
            str(_image_folder(work_dir / "images", image, images))
        )
        batches = BatchStore.from_url(settings.redis_url)
        batches.create_record(
            batch_id,
            model_id=model_id,
            source={"kind": "url", "url": files.root},
            total=len(files.files),
            chunk_size=settings.batch_chunk_size,
            top_k=5,
        )
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-m", "finetune.execution.batch_runner", batch_id],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.perf_counter() - started
        record = batches.get(batch_id)
        if completed.returncode != 0 or record["status"] != "succeeded":
            raise RuntimeError(f"the batch ended {record['status']}: {record['error']} {completed.stderr[-2000:]}")
        return {
            "images": images,
            "chunk_size": record["chunk_size"],
            "forward_size": settings.batch_forward_size,
            "decode_threads": settings.batch_decode_threads,
            "images_per_second": record["images_per_second"],
            "process_wall_s": wall,
            "errors": record["counts"]["errors"],
        }
    finally:
        redis.stop()


def _raw_in_child(model_dir: Path, model_id: str, *, images: int, forward_size: int) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.batches", "--raw", str(model_dir), model_id, str(images), str(forward_size)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=PROJECT_ROOT,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.batches --raw exited with {completed.returncode}: {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_batches(
    model_dir: Path, model_id: str, image: bytes, work_dir: Path, *, images: int = DEFAULT_IMAGES, rounds: int = ROUNDS
):
    """Both sides, each in a process of its own (TensorFlow's threads are fixed when it starts), one after
    the other, `rounds` times: `raw` and `batch` are the rounds' medians (by images/s), `rounds` every
    round's pair. One round's ratio moved between 0.63 and 0.87 from run to run on this shared machine,
    the raw side alone by a fifth."""
    work_dir.mkdir(parents=True, exist_ok=True)
    forward_size = Settings.model_construct().batch_forward_size
    pairs = []
    for number in range(rounds):
        raw = _raw_in_child(model_dir, model_id, images=images, forward_size=forward_size)
        batch = measure_batch(model_dir, model_id, image, work_dir / f"round-{number}", images=images)
        pairs.append({"raw": raw, "batch": batch})
    return {
        "model_id": model_id,
        "raw": _median_by_rate([pair["raw"] for pair in pairs]),
        "batch": _median_by_rate([pair["batch"] for pair in pairs]),
        "rounds": pairs,
    }


def _median_by_rate(results: list[dict]) -> dict:
    return sorted(results, key=lambda result: result["images_per_second"])[len(results) // 2]


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--raw":
        directory, identifier, images, forward_size = argv[1:5]
        result = measure_raw(Path(directory), identifier, images=int(images), forward_size=int(forward_size))
        print(json.dumps(result))
        return 0
    from bench.data import sample_jpeg

    directory, identifier = argv[:2]
    images = int(argv[2]) if len(argv) > 2 else DEFAULT_IMAGES
    with tempfile.TemporaryDirectory(prefix="bench-batches-") as work:
        image = sample_jpeg(Path(work) / "sample.jpg", size=224)
        result = measure_batches(Path(directory), identifier, image, Path(work), images=images)
    result["batch_vs_raw"] = result["batch"]["images_per_second"] / result["raw"]["images_per_second"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
