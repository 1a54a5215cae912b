"""``POST /predict`` against a real API process (uvicorn) and a real redis-server, over loopback.

The API, the Redis and their logs live under ``work_dir``; both processes are
stopped (as process groups) when the ``service`` context exits.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from bench.timing import percentile
from finetune.launcher import free_port, start_api, start_redis
from finetune.settings import Settings


@dataclass
class LoadLevel:
    clients: int
    requests: int  # answered 200
    errors: int  # any other answer or a transport error
    seconds: float
    p50_ms: float
    p95_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class ServingResult:
    model_id: str
    latency_requests: int
    latency_errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    levels: list[LoadLevel] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        for level, raw in zip(self.levels, out["levels"]):
            raw["throughput"] = level.throughput
        return out


def _child_env(model_dir: Path, data_dir: Path, redis_url: str) -> dict:
    """This process's environment without any service setting, then the bench's own."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update(REDIS_URL=redis_url, MODEL_DIR=str(model_dir), DATA_DIR=str(data_dir))
    return env


@contextmanager
def service(model_dir: Path, work_dir: Path) -> Iterator[str]:
    """A redis-server and the API on free loopback ports; yields the API's base URL."""
    redis_port = free_port()
    redis = start_redis(port=redis_port, data_dir=work_dir / "redis")
    try:
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = _child_env(Path(model_dir).resolve(), work_dir / "data", redis_url)
        port = free_port()
        api = start_api(env=env, port=port, log_path=work_dir / "api.log")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            api.stop()
    finally:
        redis.stop()


def _post(client: httpx.Client, url: str, image: bytes, model_id: str) -> httpx.Response:
    return client.post(
        f"{url}/predict",
        files={"file": ("bench.jpg", image, "image/jpeg")},
        data={"model_id": model_id, "top_k": "3"},
    )


def _predict(client: httpx.Client, url: str, image: bytes, model_id: str) -> tuple[bool, float]:
    """One request; (answered 200, milliseconds)."""
    start = time.perf_counter()
    try:
        ok = _post(client, url, image, model_id).status_code == 200
    except httpx.HTTPError:
        ok = False
    return ok, (time.perf_counter() - start) * 1000


def check_predict(url: str, image: bytes, model_id: str) -> dict:
    """One request whose answer must be a 200 with predictions; raises with the body otherwise."""
    with httpx.Client(timeout=120) as client:
        response = _post(client, url, image, model_id)
    if response.status_code != 200:
        raise RuntimeError(f"POST /predict answered {response.status_code}: {response.text[:500]}")
    return response.json()


def one_client_latency(url: str, image: bytes, model_id: str, *, requests: int, warmup: int = 5):
    """Sequential requests from one client; (latencies of the 200s in ms, error count)."""
    latencies, errors = [], 0
    with httpx.Client(timeout=60) as client:
        for _ in range(warmup):
            _predict(client, url, image, model_id)
        for _ in range(requests):
            ok, ms = _predict(client, url, image, model_id)
            if ok:
                latencies.append(ms)
            else:
                errors += 1
    return latencies, errors


def load_level(url: str, image: bytes, model_id: str, *, clients: int, max_requests: int,
               max_seconds: float) -> LoadLevel:
    """``clients`` threads, each its own connection, sending until ``max_requests`` or ``max_seconds``."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    budget = [max_requests]
    deadline = time.perf_counter() + max_seconds

    def take_one() -> bool:
        with lock:
            if budget[0] <= 0 or time.perf_counter() > deadline:
                return False
            budget[0] -= 1
            return True

    def client_loop() -> None:
        with httpx.Client(timeout=60) as client:
            while take_one():
                ok, ms = _predict(client, url, image, model_id)
                with lock:
                    if ok:
                        latencies.append(ms)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return LoadLevel(
        clients=clients,
        requests=len(latencies),
        errors=errors[0],
        seconds=seconds,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
    )


def measure_serving(
    model_dir: Path,
    model_id: str,
    image: bytes,
    work_dir: Path,
    *,
    requests: int = 100,
    concurrency: tuple[int, ...] = (1, 4, 8),
    level_requests: int = 200,
    level_seconds: float = 20.0,
) -> ServingResult:
    """Start the service, check one prediction, then the latency run and the load levels."""
    with service(model_dir, work_dir) as url:
        check_predict(url, image, model_id)
        latencies, errors = one_client_latency(url, image, model_id, requests=requests)
        levels = [
            load_level(url, image, model_id, clients=clients, max_requests=level_requests,
                       max_seconds=level_seconds)
            for clients in concurrency
        ]
    return ServingResult(
        model_id=model_id,
        latency_requests=len(latencies),
        latency_errors=errors,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=statistics.fmean(latencies) if latencies else float("nan"),
        levels=levels,
    )
