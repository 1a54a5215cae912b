"""Prometheus metrics, one registry per app: requests, latencies, predictions, jobs by status."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("app.metrics")


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
        self.event_streams = Gauge(
            "finetune_event_streams", "Server-sent event streams of jobs open now", registry=self.registry
        )
        self.registry.register(JobsCollector(service_getter))

    def observe_batch(self, images: int, seconds: float) -> None:
        """The micro-batchers' `on_batch`: one observation per forward pass."""
        self.batch_images.observe(images)

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
