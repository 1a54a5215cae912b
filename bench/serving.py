"""``POST /predict`` against a real API (``python -m app.server``, its default API_WORKERS processes)
and a real redis-server, over loopback.

The API, the Redis and their logs live under ``work_dir``; both are stopped (as process groups) when
the ``service`` context exits. The API runs with ``MODEL_CACHE_SIZE=cache_models``; after the load
levels, one model more than that is asked for in turn and the API's resident memory (all its
processes) read after each (``memory``). Each level also reads the micro-batchers' batch sizes from
``GET /metrics`` (summed over the processes) and the CPU time of the API's processes.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import httpx
import psutil

from bench.timing import percentile, timed_threads
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
    batches: int = 0  # forward passes the micro-batcher ran during the level
    batched_images: int = 0  # images in them
    server_cpu_ms: float = float("nan")  # the API's processes' CPU time per answered request
    client_cpu_ms: float = float("nan")  # this process's (the load generator's) CPU time per answered request

    @property
    def mean_batch(self) -> float:
        return self.batched_images / self.batches if self.batches else float("nan")

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
    memory: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)  # bench.raw_predictor: "default" and "api" thread configurations
    api_processes: int = 0  # API_WORKERS the API ran with
    passes_per_process: int = 0  # PREDICT_CONCURRENCY of each

    def as_dict(self) -> dict:
        out = asdict(self)
        for level, raw in zip(self.levels, out["levels"]):
            raw["throughput"] = level.throughput
            raw["mean_batch"] = level.mean_batch
        return out


def _child_env(model_dir: Path, data_dir: Path, redis_url: str, cache_models: int) -> dict:
    """This process's environment without any service setting, then the bench's own."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update(
        REDIS_URL=redis_url, MODEL_DIR=str(model_dir), DATA_DIR=str(data_dir), MODEL_CACHE_SIZE=str(cache_models)
    )
    return env


def api_defaults() -> Settings:
    """The settings the bench's API runs with: `_child_env` passes it no service setting."""
    clean = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    with mock.patch.dict(os.environ, clean, clear=True):
        return Settings()


@contextmanager
def service(model_dir: Path, work_dir: Path, *, cache_models: int = 2) -> Iterator[tuple[str, int]]:
    """A redis-server and the API on free loopback ports; yields the API's base URL and its pid."""
    redis_port = free_port()
    redis = start_redis(port=redis_port, data_dir=work_dir / "redis")
    try:
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = _child_env(Path(model_dir).resolve(), work_dir / "data", redis_url, cache_models)
        port = free_port()
        api = start_api(env=env, port=port, log_path=work_dir / "api.log")
        try:
            yield f"http://127.0.0.1:{port}", api.pid
        finally:
            api.stop()
    finally:
        redis.stop()


def _process_tree(pid: int) -> list[psutil.Process]:
    """Process `pid` and its descendants: `python -m app.server` runs API_WORKERS processes under it."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of process `pid` and its descendants, all their threads (nan where
    unavailable)."""
    total, seen = 0.0, False
    for process in _process_tree(pid):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total, seen = total + times.user + times.system, True
    return total if seen else float("nan")


def process_memory(pid: int) -> dict:
    """Resident memory now and at its peak (bytes) of process `pid` and its descendants, summed (a sum of
    each process's peak: at most the tree's peak), from /proc (zeros where unavailable)."""
    values = {"rss": 0, "peak_rss": 0}
    for process in _process_tree(pid):
        try:
            lines = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                values["rss"] += int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                values["peak_rss"] += int(line.split()[1]) * 1024
    return values


WARMUP_REQUESTS = 400
_BATCH_METRIC = re.compile(r"^finetune_predict_batch_images_(sum|count)\s+([0-9.eE+-]+)$", re.M)


def batch_counts(url: str) -> tuple[int, int]:
    """(forward passes, images in them) so far, from the micro-batcher's histogram in GET /metrics."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return 0, 0
    found = {name: float(value) for name, value in _BATCH_METRIC.findall(text)}
    return int(found.get("count", 0)), int(found.get("sum", 0))


def _post(client: httpx.Client, url: str, image: bytes, model_id: str) -> httpx.Response:
    return client.post(
        f"{url}/predict",
        files={"file": ("bench.jpg", image, "image/jpeg")},
        data={"model_id": model_id, "top_k": "3"},
    )


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for the load: one request's bytes built once and sent again
    and again on one socket, the answer's status read and its body skipped by Content-Length.

    httpx spent 2 to 10 ms of CPU per request here (more with more client threads, under the GIL), on
    the same two cores as the API it measures; this costs a few tens of microseconds, so the load
    generator takes next to nothing from the service under test. (`check_predict`, which looks at the
    answer, keeps httpx.)
    """

    def __init__(self, url: str, image: bytes, model_id: str, *, timeout: float = 60.0):
        parsed = urlsplit(url)
        self.address = (parsed.hostname, parsed.port)
        self.timeout = timeout
        boundary = uuid.uuid4().hex
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="model_id"\r\n\r\n{model_id}\r\n'.encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n'.encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n".encode(),
                image,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {parsed.netloc}\r\nUser-Agent: bench\r\nAccept: */*\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        return sock

    def post(self) -> int:
        """One request; the answer's status code (the connection is reopened after an error)."""
        try:
            if self.sock is None:
                self.sock = self._connect()
            self.sock.sendall(self.request)
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += self._recv()
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(
                int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:")
            )
            while len(self.buffer) < length:
                self.buffer += self._recv()
            self.buffer = self.buffer[length:]
            if any(line.lower() == b"connection: close" for line in lines[1:]):
                self.close()
            return status
        except (OSError, ValueError, StopIteration, IndexError):
            self.close()
            return 0

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def timed(self) -> tuple[bool, float]:
        """One request; (answered 200, milliseconds)."""
        start = time.perf_counter()
        ok = self.post() == 200
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
    client = RawClient(url, image, model_id)
    try:
        for _ in range(warmup):
            client.timed()
        for _ in range(requests):
            ok, ms = client.timed()
            if ok:
                latencies.append(ms)
            else:
                errors += 1
    finally:
        client.close()
    return latencies, errors


def load_level(
    url: str, image: bytes, model_id: str, *, clients: int, max_requests: int, max_seconds: float
) -> LoadLevel:
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
        client = RawClient(url, image, model_id)
        try:
            while take_one():
                ok, ms = client.timed()
                with lock:
                    if ok:
                        latencies.append(ms)
                    else:
                        errors[0] += 1
        finally:
            client.close()

    seconds = timed_threads(client_loop, clients)
    return LoadLevel(
        clients=clients,
        requests=len(latencies),
        errors=errors[0],
        seconds=seconds,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
    )


def cache_memory(url: str, pid: int, image: bytes, model_ids: list[str]) -> dict:
    """On an API that has just started (and preloaded the newest model): ask for the newest, then for
    each other model in turn (one more than the cache holds), and go round the models once more, each
    evicted by then and loaded anew. The API's resident memory after each; ``steps[i]`` for i < the
    number of models: i + 1 distinct models asked for."""
    listed = httpx.get(f"{url}/models", timeout=30).json()["data"]
    newest = listed[0]["id"] if listed else model_ids[-1]
    others = [model_id for model_id in model_ids if model_id != newest]
    steps = []
    order = [newest, *others]
    for number, model_id in enumerate(order * 2, start=1):  # twice round: every ask past the cache's size loads
        check_predict(url, image, model_id)
        label = (
            f"{number} distinct models asked for"
            if number <= len(order)
            else f"round 2, model {number - len(order)} (evicted before: loaded anew)"
        )
        steps.append({"after": label, "model_id": model_id, **process_memory(pid)})
    return {"steps": steps, "models": len(model_ids)}


def measure_serving(
    model_dir: Path,
    model_ids: list[str],
    image: bytes,
    work_dir: Path,
    *,
    requests: int = 500,
    concurrency: tuple[int, ...] = (1, 4, 8),
    level_requests: int = 2000,
    level_seconds: float = 20.0,
    cache_models: int = 2,
) -> ServingResult:
    """Start the service, check one prediction, then the latency run, the load levels (on the first
    model) and the memory with ``len(model_ids)`` models through a cache of ``cache_models``."""
    model_id = model_ids[0]
    with service(model_dir, work_dir, cache_models=cache_models) as (url, pid):
        check_predict(url, image, model_id)
        # every API process loads and warms the model on its own first request, and its start-up preload
        # may still be running: a round of 8 clients first, so the figures are the steady state's
        load_level(url, image, model_id, clients=8, max_requests=WARMUP_REQUESTS, max_seconds=level_seconds)
        latencies, errors = one_client_latency(url, image, model_id, requests=requests)
        levels = []
        for clients in concurrency:
            before, server_cpu, client_cpu = batch_counts(url), process_cpu_s(pid), time.process_time()
            level = load_level(
                url, image, model_id, clients=clients, max_requests=level_requests, max_seconds=level_seconds
            )
            client_cpu, server_cpu = time.process_time() - client_cpu, process_cpu_s(pid) - server_cpu
            after = batch_counts(url)
            level.batches, level.batched_images = after[0] - before[0], after[1] - before[1]
            if level.requests:
                level.server_cpu_ms = 1000 * server_cpu / level.requests
                level.client_cpu_ms = 1000 * client_cpu / level.requests
            levels.append(level)
    from bench.raw_predictor import measure_in_child

    # the same Predictor without HTTP, once with TensorFlow's default threads (one pass on every core), once
    # as the API runs it (PREDICT_THREADS per pass, PREDICT_CONCURRENCY passes at once), the API stopped
    defaults = api_defaults()
    raw = {
        "default": measure_in_child(model_dir, model_id, threads=0, streams=1),
        "api": measure_in_child(
            model_dir,
            model_id,
            threads=defaults.predict_threads,
            streams=defaults.api_workers * defaults.predict_concurrency,
        ),
    }
    memory = {}
    if len(model_ids) > 1:  # a fresh API: only the preloaded model in its cache
        with service(model_dir, work_dir / "memory", cache_models=cache_models) as (url, pid):
            memory = cache_memory(url, pid, image, model_ids)
    memory["cache_size"] = cache_models
    memory["model_file_bytes"] = sum(f.stat().st_size for f in (Path(model_dir) / model_id).glob("*") if f.is_file())
    return ServingResult(
        model_id=model_id,
        latency_requests=len(latencies),
        latency_errors=errors,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=statistics.fmean(latencies) if latencies else float("nan"),
        levels=levels,
        memory=memory,
        raw=raw,
        api_processes=defaults.api_workers,
        passes_per_process=defaults.predict_concurrency,
    )
