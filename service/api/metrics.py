"""Prometheus metrics, in a registry per app (so that tests can build many apps)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
# the methods counted under their own name; any other method a client invents is "other", so
# that no request can add a series (routes are templates or "unmatched", statuses the app's)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tbps_http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("tbps_http_request_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.search_seconds = Histogram("tbps_search_seconds", "Search time inside the service",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.index_vectors = Gauge("tbps_index_vectors", "Vectors in the live index",
                                   registry=self.registry)
        self.denied_unaudited = Counter(
            "tbps_auth_denied_unaudited_total", "Refused requests not written to the audit log "
            "(over TBPS_DENIED_AUDIT_PER_MINUTE for their client)", registry=self.registry)
        self.uploads = Counter("tbps_uploaded_files_total", "Uploaded files by outcome",
                               ["status"], registry=self.registry)


class MetricsMiddleware:
    """Counts and times every request by its route template (not its raw path) and its
    method (a standard one, else "other")."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.requests.labels(method, path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
