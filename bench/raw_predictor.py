"""The saved model's raw forward pass in the API's own configuration, without HTTP.

``python -m bench.raw_predictor MODEL_DIR MODEL_ID THREADS STREAMS`` prints one JSON object:
``finetune.ml.predictor.Predictor`` (the code /predict runs) loaded after
``set_threads_per_op(THREADS)``, then the batch-1 latency (one stream) and the batch-8
throughput of STREAMS threads calling ``predict_pixels`` at once, as the API's micro-batcher
does with PREDICT_CONCURRENCY. A process of its own: TensorFlow's threads are fixed when it
starts, and the bench's own process already runs with TensorFlow's defaults.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.timing import timed_threads


def measure(model_dir: Path, model_id: str, *, threads: int, streams: int, calls: int = 30) -> dict:
    from finetune.ml.predictor import Predictor, set_threads_per_op
    from finetune.stores.models import ModelStore

    set_threads_per_op(threads)
    store = ModelStore(model_dir)
    manifest = store.get(model_id)
    predictor = Predictor(store.model_file(model_id), manifest)
    predictor.warm_up()
    size = predictor.image_size
    rng = np.random.default_rng(0)
    single = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    latencies = []
    for _ in range(5 * calls):
        started = time.perf_counter()
        predictor.predict_pixels(single)
        latencies.append(1000 * (time.perf_counter() - started))

    def stream():
        for _ in range(calls):
            predictor.predict_pixels(batch)

    predictor.predict_pixels(batch)
    seconds = timed_threads(stream, streams)
    return {
        "threads": threads,
        "streams": streams,
        "latency_b1_ms": statistics.median(latencies),
        "forward_b8_ips": streams * calls * len(batch) / seconds,
    }


def measure_in_child(model_dir: Path, model_id: str, *, threads: int, streams: int, timeout_s: float = 600) -> dict:
    import subprocess

    completed = subprocess.run(
        [sys.executable, "-m", "bench.raw_predictor", str(model_dir), model_id, str(threads), str(streams)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=Path(__file__).resolve().parents[1],
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.raw_predictor exited with {completed.returncode}: {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    directory, identifier, thread_count, stream_count = sys.argv[1:5]
    print(json.dumps(measure(Path(directory), identifier, threads=int(thread_count), streams=int(stream_count))))
