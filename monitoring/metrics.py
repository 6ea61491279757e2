"""Prometheus metrics of the API: requests by route template, method and code, and latency.

The route label is the matched route's *template* (``/v1/operations/{operation_id}``), never the
raw path, so the number of series stays bounded: a request no route matches is labelled
``unmatched``, an unusual method ``other``.

``/metrics`` serves the process's default registry or, when ``PROMETHEUS_MULTIPROC_DIR`` is set
(several uvicorn workers), the merged files of every process in that directory.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
"""Route label of requests no route matched (404s, slash redirects)."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The :wait long-poll runs up to 60 s: the buckets go that far.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "conveyor_http_requests_total",
    "HTTP requests handled by the API, by route template, method and status code.",
    ["route", "method", "code"],
)
HTTP_REQUEST_DURATION = Histogram(
    "conveyor_http_request_duration_seconds",
    "Time the API took to handle a request, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)

# Read replicas (app/db/replicas.py): which database served the reads meant for a replica, and why
# the primary did when it did; the replica's measured lag and whether it answers.
REPLICA_READS = Counter(
    "conveyor_replica_reads_total",
    "Transactions meant for a domain's read replica, by the database that served them"
    " (target: replica or primary).",
    ["domain", "target"],
)
REPLICA_FALLBACKS = Counter(
    "conveyor_replica_fallbacks_total",
    "Replica reads served by the primary instead, by reason: unreachable (the replica failed to"
    " answer), breaker_open (it failed recently), lag (further behind than the maximum lag),"
    " read_your_writes (the caller wrote something the replica has not replayed yet).",
    ["domain", "reason"],
)
REPLICA_ERRORS = Counter(
    "conveyor_replica_errors_total",
    "Failures of a read replica: connecting, measuring its lag, or a read on it.",
    ["domain"],
)
REPLICA_LAG = Gauge(
    "conveyor_replica_lag_seconds",
    "How far a domain's read replica is behind its primary, in seconds (0 when it has replayed"
    " everything the primary has written), as last measured.",
    ["domain"],
    multiprocess_mode="livemax",
)
REPLICA_LAG_BYTES = Gauge(
    "conveyor_replica_lag_bytes",
    "WAL bytes the primary has written that the replica has not replayed, as last measured.",
    ["domain"],
    multiprocess_mode="livemax",
)
REPLICA_UP = Gauge(
    "conveyor_replica_up",
    "1 when a domain's read replica answered its last check, 0 when it did not.",
    ["domain"],
    multiprocess_mode="livemin",
)


def route_template(scope: Scope) -> str:
    """Returns the template of the route that handled the request, or ``unmatched``.

    Starlette's router records the matched route in ``scope["route"]`` (also on a partial match,
    which answers 405), so this is read after the app has run.

    Args:
        scope: The ASGI scope after the app handled it.

    Returns:
        The route's path template (mount prefix included), or :data:`UNMATCHED`.
    """
    path = getattr(scope.get("route"), "path", None)
    if not isinstance(path, str) or not path:
        return UNMATCHED
    return str(scope.get("root_path") or "") + path


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them (no ``BaseHTTPMiddleware``)."""

    def __init__(self, app: ASGIApp) -> None:
        """Wraps ``app``.

        Args:
            app: The ASGI app.
        """
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handles one ASGI call.

        Args:
            scope: ASGI scope.
            receive: ASGI receive.
            send: ASGI send.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # An exception escaping the app becomes a 500 further out (ServerErrorMiddleware).
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = route_template(scope)
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_REQUEST_DURATION.labels(route, method).observe(time.perf_counter() - start)


def exposition_registry() -> CollectorRegistry:
    """Returns the registry ``/metrics`` serves.

    Returns:
        A registry merging every process's files in multiprocess mode, else the default one.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


async def metrics_endpoint(_: Request) -> Response:
    """``GET /metrics`` in the Prometheus text format.

    Returns:
        The exposition.
    """
    return Response(generate_latest(exposition_registry()), media_type=CONTENT_TYPE_LATEST)
