"""Prometheus metrics: request count and latency per route, images per predict forward pass, and jobs by
status read from the registry at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import registry
from service.registry import JobStatus


class JobsCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        with registry.session_scope() as session:
            counts = registry.count_jobs_by_status(session)
        family = GaugeMetricFamily("classcomp_jobs", "Jobs in the registry by status", labels=["status"])
        for status in JobStatus:
            family.add_metric([status.value], counts.get(status, 0))
        yield family


class Metrics:
    """One set of metrics per app (not the process-global registry), so several apps in one process never clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("classcomp_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("classcomp_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry)
        self.predict_batch_size = Histogram(
            "classcomp_predict_batch_size", "Images per forward pass shared by concurrent predict requests",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=self.registry)
        self.registry.register(JobsCollector())


class MetricsMiddleware:
    """Counts and times every request under its route template (/v1/models/{ref}), so ids do not explode the label set."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = getattr(scope.get("route"), "path_format", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
