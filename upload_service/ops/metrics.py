"""Prometheus metrics: ``PrometheusMetrics`` implements ``Events`` over collectors of its own
registry, ``RequestMetrics`` times requests by route template, ``measure_loop_lag`` samples how
late the event loop wakes up, and ``render`` is the text for ``GET /metrics``.

Nothing is registered at import time: each app builds its own ``PrometheusMetrics``. With
``--workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
prometheus_client; every worker then writes its values to files there and ``render`` adds them
up across workers (gauges: the live workers' sum or maximum).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upload_service.ops.middleware import route_path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
LOOP_LAG_INTERVAL = 0.5
UNMATCHED_ROUTE = "unmatched"
_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class PrometheusMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._created = Counter("upload_uploads_created", "Uploads created.", registry=r)
        self._finished = Counter(
            "upload_uploads_finished", "Uploads that became ready.", registry=r
        )
        self._failed = Counter("upload_uploads_failed", "Uploads that failed.", registry=r)
        self._terminated = Counter(
            "upload_uploads_terminated", "Uploads terminated by DELETE.", registry=r
        )
        self._expired = Counter(
            "upload_uploads_expired", "Unfinished uploads that expired.", registry=r
        )
        self._bytes = Counter(
            "upload_received_bytes", "Request body bytes received for uploads.", registry=r
        )
        self._active = Gauge(
            "upload_active_uploads",
            "Requests receiving an upload's bytes right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.requests = Histogram(
            "upload_request_duration_seconds",
            "HTTP request durations by method, route template and status.",
            ("method", "route", "status"),
            buckets=_SECONDS,
            registry=r,
        )
        self._lock_wait = Histogram(
            "upload_lock_wait_seconds",
            "Time spent waiting for an upload's lock, by outcome (acquired or timeout).",
            ("outcome",),
            buckets=_SECONDS,
            registry=r,
        )
        self._release_requested = Counter(
            "upload_lock_release_requests",
            "Release requests received by lock holders.",
            registry=r,
        )
        self._release_honoured = Counter(
            "upload_lock_releases_honoured",
            "Locks let go of after a release request.",
            registry=r,
        )
        self._pre_create = Counter(
            "upload_hook_pre_create",
            "Pre-create hook answers, by outcome (allowed, amended, rejected, unavailable).",
            ("outcome",),
            registry=r,
        )
        self._deliveries = Counter(
            "upload_hook_deliveries",
            "Event delivery attempts, by event type and outcome (delivered, retried, failed).",
            ("type", "outcome"),
            registry=r,
        )
        self._delivery_failures = Counter(
            "upload_hook_delivery_failures",
            "Failed event delivery attempts, by event type and reason (server_error, timeout, ...).",
            ("type", "reason"),
            registry=r,
        )
        self.loop_lag = Gauge(
            "upload_event_loop_lag_seconds",
            "How late the event loop woke from its last periodic sleep.",
            registry=r,
            multiprocess_mode="livemax",
        )

    # -- Events ---------------------------------------------------------------------------------

    def created(self) -> None:
        self._created.inc()

    def finished(self) -> None:
        self._finished.inc()

    def failed(self) -> None:
        self._failed.inc()

    def terminated(self) -> None:
        self._terminated.inc()

    def expired(self, count: int) -> None:
        if count:
            self._expired.inc(count)

    def received(self, size: int) -> None:
        if size:
            self._bytes.inc(size)

    def receiving(self) -> AbstractContextManager[None]:
        return self._receiving()

    @contextmanager
    def _receiving(self) -> Iterator[None]:
        self._active.inc()
        try:
            yield
        finally:
            self._active.dec()

    def lock_waited(self, seconds: float, acquired: bool) -> None:
        self._lock_wait.labels("acquired" if acquired else "timeout").observe(seconds)

    def release_requested(self) -> None:
        self._release_requested.inc()

    def release_honoured(self) -> None:
        self._release_honoured.inc()

    def pre_create_hook(self, outcome: str) -> None:
        self._pre_create.labels(outcome).inc()

    def hook_delivery(self, event_type: str, outcome: str) -> None:
        self._deliveries.labels(event_type, outcome).inc()

    def hook_delivery_failed(self, event_type: str, reason: str) -> None:
        self._delivery_failures.labels(event_type, reason).inc()

    # -- exposition -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text format: this registry's, or every worker's added up in multi-process mode."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """This process stops: its live gauges leave the multi-process totals."""
        if multiprocess_dir() is not None:
            prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


async def measure_loop_lag(metrics: PrometheusMetrics, interval: float = LOOP_LAG_INTERVAL) -> None:
    """Sleep ``interval`` again and again; the overshoot is how long the loop was busy elsewhere."""
    while True:
        started = time.monotonic()
        await anyio.sleep(interval)
        metrics.loop_lag.set(max(0.0, time.monotonic() - started - interval))


class RequestMetrics:
    """Times every HTTP request, labelled with its route template (``/files/{upload_id}``), never
    the raw path, so the number of series stays bounded. Installed inside the middleware that
    copies the scope, so the router's ``scope["route"]`` is seen here."""

    def __init__(self, app: ASGIApp, metrics: PrometheusMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(
                scope["method"], route_template(scope), str(status)
            ).observe(time.monotonic() - started)


def route_template(scope: Scope) -> str:
    """The matched route's path with its parameters as ``{name}`` (``/files/{upload_id}``).

    Rebuilt from the routed path and the path parameters the router found, which every router
    (Starlette's, FastAPI's included routers) leaves in the scope; a request no route matched is
    ``unmatched``, so a client cannot make new series by inventing paths.
    """
    if scope.get("route") is None:
        return UNMATCHED_ROUTE
    names = {str(value): name for name, value in scope.get("path_params", {}).items()}
    segments = route_path(scope).split("/")
    return "/".join(f"{{{names[part]}}}" if part in names else part for part in segments)
