"""Prometheus metrics, one registry per app: requests, latencies, predictions, jobs by status.

Under `python -m app.server` with several processes, PROMETHEUS_MULTIPROC_DIR is set before any of them
imports prometheus_client: every value then lives in that folder's files, and `exposition()` on any
process sums them all (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("app.metrics")
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_processes(folder: str) -> list[int]:
    """Drop the live gauges of processes that died (a crashed API process, restarted by uvicorn), so an
    event stream it held open is not counted for ever; their counters stay, as counters do."""
    dead = set()
    for path in Path(folder).glob("gauge_live*_*.db"):
        found = _LIVE_GAUGE_FILE.match(path.name)
        if found and not pid_alive(int(found.group(1))):
            dead.add(int(found.group(1)))
    for pid in dead:
        mark_process_dead(pid, folder)
    return sorted(dead)


class JobsCollector:
    def __init__(self, service_getter):
        self.service_getter = service_getter

    def collect(self):
        family = GaugeMetricFamily("finetune_jobs", "Jobs by status", labels=["status"])
        service = self.service_getter()
        if service is not None:
            try:
                for status, count in service.jobs.counts_by_status().items():
                    family.add_metric([status], count)
            except Exception:  # a scrape must not fail because Redis is down; say so in the log
                log.warning("jobs by status not collected: Redis unreachable", exc_info=True)
        yield family


class AppMetrics:
    def __init__(self, service_getter):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "finetune_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "finetune_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.predictions = Counter("finetune_predictions", "Images classified", registry=self.registry)
        self.batch_images = Histogram(
            "finetune_predict_batch_images",
            "Images per forward pass of /predict's micro-batcher",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.batch_seconds = Histogram(
            "finetune_predict_batch_seconds",
            "Seconds of each forward pass of /predict's micro-batcher",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.event_streams = Gauge(
            "finetune_event_streams",
            "Server-sent event streams of jobs open now",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.jobs = JobsCollector(service_getter)
        self.registry.register(self.jobs)
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_ENV)
        if self.multiprocess_dir:
            forget_dead_processes(self.multiprocess_dir)

    def exposition(self) -> bytes:
        """The text format of every metric: this process's, or with several API processes all of theirs."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(self.jobs)
        return generate_latest(registry)

    def observe_batch(self, images: int, seconds: float) -> None:
        """The micro-batchers' `on_batch`: one observation per forward pass."""
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)

    def middleware(self, app):
        """Counts and times every HTTP request by route template, as a plain ASGI middleware
        (Starlette's BaseHTTPMiddleware costs a task group and memory streams per request)."""

        async def measured(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            started, status = time.perf_counter(), 500

            async def recording_send(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, recording_send)
            finally:
                path = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(scope["method"], path, str(status)).inc()
                self.latency.labels(scope["method"], path).observe(time.perf_counter() - started)

        return measured
