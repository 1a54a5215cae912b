"""A bounded load test of a running API, loopback only.

For `--duration` seconds, `--concurrency` clients POST /predict back to back while `--poll-clients`
more poll GET /jobs/{id} at `--poll-hz` in all on a job that trains meanwhile (started here from `--dataset-id`,
or an existing `--job-id`). Prints requests, errors, p50/p95/p99 latencies, and the API process's RSS
before and after (psutil, with `--api-pid`). Stops by itself: at most MAX_DURATION_S seconds and
MAX_REQUESTS requests, whatever is asked.

    python -m bench.load_test --url http://127.0.0.1:8000 --duration 10 --dataset-id ID \\
        [--model-id ID] [--api-pid PID] [--json summary.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image

MAX_DURATION_S = 300.0
MAX_REQUESTS = 200_000
MAX_CONCURRENCY = 256
WARMUP_S = 3.0
REQUEST_TIMEOUT_S = 60.0
DEFAULT_JOB = {
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "none",
    "image_size": 32,
    "batch_size": 4,
    "head": {"units": 8, "dropout": 0.0},
    "augmentation": None,
    "warmup": {"epochs": 2},
    "finetune": {"epochs": 3, "unfreeze_from": 50},
}


@dataclass
class Series:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, started: float, outcome: str | None) -> None:
        self.latencies.append(time.perf_counter() - started)
        if outcome is not None:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1

    def summary(self, seconds: float) -> dict:
        values = np.asarray(self.latencies) * 1000.0
        quantiles = (
            (
                {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)}
                | {"max": round(float(values.max()), 2)}
            )
            if len(values)
            else {}
        )
        return {
            "requests": len(values),
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "per_s": round(len(values) / seconds, 1) if seconds else None,
            "latency_ms": quantiles,
        }


class Budget:
    """Shared stop condition: a deadline and a request count."""

    def __init__(self, seconds: float, max_requests: int):
        self.deadline = time.monotonic() + seconds
        self.left = max_requests

    def take(self) -> bool:
        if self.left <= 0 or time.monotonic() >= self.deadline:
            return False
        self.left -= 1
        return True


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"refusing to load-test {host!r}: this script only targets loopback addresses")


def sample_image(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array([200, 40, 40]) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


async def predict_loop(
    client: httpx.AsyncClient, budget: Budget, series: Series, image: bytes, model_id: str | None
) -> None:
    data = {"model_id": model_id} if model_id else {}
    while budget.take():
        started = time.perf_counter()
        try:
            response = await client.post("/predict", data=data, files=[("file", ("load.png", image, "image/png"))])
            outcome = None if response.status_code == 200 else f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        series.record(started, outcome)


async def poll_loop(
    client: httpx.AsyncClient, budget: Budget, series: Series, job_id: str, hz: float, seen: dict
) -> None:
    interval = 1.0 / hz
    while budget.take():
        started = time.perf_counter()
        try:
            response = await client.get(f"/jobs/{job_id}")
            outcome = None if response.status_code == 200 else f"HTTP {response.status_code}"
            if outcome is None:
                job = response.json()
                seen["status"], seen["progress"] = job["status"], job["progress"]
                seen["statuses"].add(job["status"])
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        series.record(started, outcome)
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))


def rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


async def run(args: argparse.Namespace) -> dict:
    require_loopback(args.url)
    duration = min(args.duration, MAX_DURATION_S)
    concurrency = max(1, min(args.concurrency, MAX_CONCURRENCY))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    image = sample_image()
    async with httpx.AsyncClient(base_url=args.url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        # warm-up: the model loaded and its batch shapes traced before RSS is first read
        warm = Series()
        warm_budget = Budget(WARMUP_S, MAX_REQUESTS)
        await asyncio.gather(
            *(predict_loop(client, warm_budget, warm, image, args.model_id) for _ in range(concurrency))
        )
        rss_before = rss_mb(args.api_pid)

        job_id = args.job_id
        if job_id is None and args.dataset_id:
            response = await client.post("/jobs", json={"dataset_id": args.dataset_id, **DEFAULT_JOB})
            response.raise_for_status()
            job_id = response.json()["id"]

        budget = Budget(duration, min(args.max_requests, MAX_REQUESTS))
        predictions, polls = Series(), Series()
        seen: dict = {"status": None, "progress": None, "statuses": set()}
        started = time.monotonic()
        tasks = [predict_loop(client, budget, predictions, image, args.model_id) for _ in range(concurrency)]
        if job_id:
            clients = max(1, args.poll_clients)
            tasks += [poll_loop(client, budget, polls, job_id, args.poll_hz / clients, seen) for _ in range(clients)]
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        rss_after = rss_mb(args.api_pid)

    return {
        "url": args.url,
        "duration_s": round(elapsed, 2),
        "concurrency": concurrency,
        "warmup": warm.summary(WARMUP_S),
        "predict": predictions.summary(elapsed),
        "job_poll": polls.summary(elapsed)
        | {
            "job_id": job_id,
            "last_status": seen["status"],
            "statuses_seen": sorted(seen["statuses"]),
            "last_progress": seen["progress"],
        },
        "requests": len(predictions.latencies) + len(polls.latencies),
        "errors": sum(predictions.errors.values()) + sum(polls.errors.values()),
        "rss_mb": {
            "before": rss_before,
            "after": rss_after,
            "growth": None if rss_before is None or rss_after is None else round(rss_after - rss_before, 1),
        },
    }


def print_summary(summary: dict) -> None:
    def row(name: str, part: dict) -> str:
        q = part["latency_ms"]
        return (
            f"{name:<9} {part['requests']:>7} req  {part['per_s'] or 0:>7}/s  errors {part['errors']:>3}  "
            f"p50 {q.get('p50', '-')} ms  p95 {q.get('p95', '-')} ms  p99 {q.get('p99', '-')} ms"
        )

    print(f"load test of {summary['url']}: {summary['duration_s']} s, {summary['concurrency']} predict clients")
    print(row("predict", summary["predict"]))
    print(
        row("job poll", summary["job_poll"]) + f"  (job {summary['job_poll']['job_id']}: "
        f"{summary['job_poll']['statuses_seen']})"
    )
    rss = summary["rss_mb"]
    print(
        f"total     {summary['requests']:>7} req  errors {summary['errors']}  "
        f"API RSS {rss['before']} MB -> {rss['after']} MB (growth {rss['growth']} MB)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--duration", type=float, default=10.0, help=f"seconds (at most {MAX_DURATION_S:.0f})")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent /predict clients")
    parser.add_argument("--model-id", default=None, help="default: the newest model")
    parser.add_argument("--dataset-id", default=None, help="start a small job on it and poll it")
    parser.add_argument("--job-id", default=None, help="poll this job instead")
    parser.add_argument("--poll-hz", type=float, default=50.0, help="GET /jobs/{id} per second, all clients together")
    parser.add_argument("--poll-clients", type=int, default=4, help="concurrent pollers sharing --poll-hz")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("--api-pid", type=int, default=None, help="the API process, for its RSS")
    parser.add_argument("--json", default=None, help="also write the summary here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(run(args))
    print_summary(summary)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
