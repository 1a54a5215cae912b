"""Prometheus metrics, one registry per app: requests, latencies, predictions, jobs by status."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request


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
            except Exception:
                pass
        yield family


class AppMetrics:
    def __init__(self, service_getter):
        self.registry = CollectorRegistry()
        self.requests = Counter("finetune_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("finetune_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.predictions = Counter("finetune_predictions", "Images classified", registry=self.registry)
        self.registry.register(JobsCollector(service_getter))

    async def middleware(self, request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.requests.labels(request.method, path, str(response.status_code)).inc()
        self.latency.labels(request.method, path).observe(time.perf_counter() - started)
        return response
