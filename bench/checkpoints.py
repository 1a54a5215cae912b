"""Shared checkpoints' cost (issue 17): one VGG16 checkpoint upload to an S3 server, and training with
and without the background upload, side by side in one run (``python -m bench.checkpoints``).

- Upload: a VGG16 classifier (weights "none": the size is the same as ImageNet's) with its Adam state,
  written by the project's Checkpointer, then copied to moto's S3 server on loopback by the
  CheckpointUploader the job process runs — `--repeats` times; seconds and MB/s per upload.
- Slowdown: the project's ``train()`` on a small generated data set (VGG16, 32-pixel images, so an
  epoch takes seconds and nearly every epoch ends while an upload of the last one is in flight — the
  worst case), once with checkpoints in a local folder only and once with that folder uploaded in the
  background as a job on an s3:// store does, alternating, `--rounds` times each.

Loopback moto is not a network: a real object store adds its bandwidth (a 180 MB checkpoint at
100 MB/s is ~2 s more per upload); the upload runs beside training either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.data import generate_dataset
from finetune.stores.checkpoints import UPLOAD_BUSY_SHARE

BUCKET = "bench"


def start_moto(workdir: Path) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/moto-api/", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url
    )
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return server, url


def vgg16_checkpoint(folder: Path) -> int:
    """A VGG16 classifier's checkpoint as a finetune epoch leaves it (weights and Adam state). Its bytes."""
    import keras
    import numpy as np

    from finetune.ml.checkpoint import Checkpointer, TrainingState

    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    model = keras.Sequential([base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 32, 32, 3), "float32"), np.zeros(4, "int32"), epochs=1, verbose=0)
    Checkpointer(folder).save(model, TrainingState(phase="finetune", epoch=1, history=[{}], trainee="model"))
    return sum(path.stat().st_size for path in folder.glob("trainee-*.keras"))


def time_uploads(folder: Path, repeats: int) -> list[dict]:
    from finetune.stores.checkpoints import CheckpointUploader
    from finetune.stores.location import Location

    figures = []
    for index in range(repeats):
        uploader = CheckpointUploader(Location(f"s3://{BUCKET}/upload-{index}"), "job", folder)
        assert uploader.upload_newest()
        seconds, size = uploader.done.seconds[0], uploader.done.bytes[0]
        figures.append({"seconds": round(seconds, 2), "mb": round(size / 1e6, 1), "mb_s": round(size / 1e6 / seconds)})
        print("upload", json.dumps(figures[-1]), file=sys.stderr, flush=True)
    return figures


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# local only; uploading after every epoch (one in flight at most); the default pacing
SIDES = (None, 1.0, UPLOAD_BUSY_SHARE)


def train_once(dataset: Path, checkpoints: Path, *, busy_share: float | None, epochs: int, server_pid: int) -> dict:
    """One training run; `busy_share` None: checkpoints kept locally only, else uploaded in the background
    taking at most that share of the wall time (1.0: after every epoch, as long as one is not in flight)."""
    from finetune.ml.spec import TrainingSpec
    from finetune.ml.training import train
    from finetune.stores.checkpoints import CheckpointStore

    spec = TrainingSpec(
        backbone="vgg16",
        weights="none",
        image_size=32,
        batch_size=8,
        augmentation=None,
        warmup={"epochs": 1},
        finetune={"epochs": epochs},
    )
    shutil.rmtree(checkpoints, ignore_errors=True)
    store = CheckpointStore(f"s3://{BUCKET}/train", staging_root=checkpoints)
    uploader = store.uploader("job", busy_share=busy_share) if busy_share is not None else None
    started, cpu_here, cpu_server = time.perf_counter(), cpu_seconds(os.getpid()), cpu_seconds(server_pid)
    train(spec, dataset_dir=dataset, checkpoint_dir=store.working_dir("job"))
    elapsed = time.perf_counter() - started
    cpu_here, cpu_server = cpu_seconds(os.getpid()) - cpu_here, cpu_seconds(server_pid) - cpu_server
    if uploader is not None:
        uploader.stop()
        store.remove_shared("job")
    done = uploader.done if uploader else None
    return {
        "upload_busy_share": busy_share,
        "train_s": round(elapsed, 1),
        "uploads": len(done.seconds) if done else 0,
        "upload_s_mean": round(sum(done.seconds) / len(done.seconds), 2) if done and done.seconds else None,
        "epochs": 1 + epochs,
        "cpu_s_training_process": round(cpu_here, 1),  # training and, when shared, the upload thread
        "cpu_s_s3_server": round(cpu_server, 1),  # moto receiving: on another host in a deployment
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="VGG16 checkpoint uploads timed")
    parser.add_argument("--rounds", type=int, default=2, help="training runs per side (alternating)")
    parser.add_argument("--epochs", type=int, default=6, help="finetune epochs per training run")
    args = parser.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    workdir = Path(tempfile.mkdtemp(prefix="bench-checkpoints-"))
    server, url = start_moto(workdir)
    try:
        size = vgg16_checkpoint(workdir / "vgg16")
        uploads = time_uploads(workdir / "vgg16", args.repeats)
        dataset = generate_dataset(workdir / "data", classes=5, per_class=16, size=(64, 48))
        runs = []
        for _ in range(args.rounds):
            for share in SIDES:
                runs.append(
                    train_once(
                        dataset,
                        workdir / "train-checkpoints",
                        busy_share=share,
                        epochs=args.epochs,
                        server_pid=server.pid,
                    )
                )
                print("training", json.dumps(runs[-1]), file=sys.stderr, flush=True)
        local = sum(run["train_s"] for run in runs if run["upload_busy_share"] is None)
        result = {
            "checkpoint_mb": round(size / 1e6, 1),
            "uploads": uploads,
            "training": runs,
            # wall time over the local-only runs', minus 1, per upload pacing
            "slowdown": {
                str(share): round(sum(r["train_s"] for r in runs if r["upload_busy_share"] == share) / local - 1.0, 3)
                for share in SIDES[1:]
            },
            "cores": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 1),  # other work on the machine skews both sides
        }
        print(json.dumps(result, indent=2))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
