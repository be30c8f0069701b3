"""The application factory. ``create_app`` builds nothing but routes; the lifespan builds the engine,
store, locker and handler, reconciles storage with the database, and tears them down."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from upload_service import __version__
from upload_service.api.companion import router as companion_router
from upload_service.api.docs import OPENAPI_PATH, mount_docs
from upload_service.api.forms import router as forms_router
from upload_service.api.listing import router as listing_router
from upload_service.api.progress import router as progress_router
from upload_service.api.routes import router as api_router
from upload_service.api.tickets import router as tickets_router
from upload_service.auth.setup import open_auth
from upload_service.auth.tickets import TicketAuthenticator
from upload_service.db.base import Quota
from upload_service.db.engine import create_engine, create_transactions
from upload_service.db.migrate import check_schema
from upload_service.db.repository import SqlUploadRepository
from upload_service.db.stores import check_storage
from upload_service.errors import BadRequest, ServiceError
from upload_service.events import NO_EVENTS, Events
from upload_service.hooks.build import open_hooks
from upload_service.lifecycle import Lifecycle
from upload_service.locking.base import Locker
from upload_service.locking.file import FileLocker
from upload_service.locking.metered import MeteredLocker
from upload_service.ops.heap import StartUpHeap
from upload_service.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from upload_service.ops.metrics import PrometheusMetrics, RequestMetrics, measure_loop_lag
from upload_service.ops.middleware import (
    MethodOverrideMiddleware,
    SecurityHeadersMiddleware,
    TusResumableMiddleware,
    route_path,
    under,
)
from upload_service.ops.pressure import LoadShedding, Pressure
from upload_service.ops.proxy import ProxyHeadersMiddleware, TrustedProxies
from upload_service.ops.requestlog import REQUEST_ID_HEADER, RequestLogMiddleware
from upload_service.services import Services
from upload_service.settings import Settings, load_settings
from upload_service.storage.base import Store
from upload_service.storage.local.store import LocalStore
from upload_service.storage.s3.client import ObjectClient
from upload_service.storage.s3.layout import MAX_OBJECT_SIZE
from upload_service.storage.s3.store import S3Store
from upload_service.tasks import Runner, TaskRunner
from upload_service.tus.direct import DirectUploads
from upload_service.tus.handler import TusHandler, utcnow
from upload_service.tus.openapi import tus_paths
from upload_service.tus.protocol import REQUEST_HEADERS, RESPONSE_HEADERS
from upload_service.tus.routes import TusEndpoints, error_response
from upload_service.tus.types import HandlerConfig
from upload_service.video import build_prober
from upload_service.web.page import page_router

logger = logging.getLogger("upload_service")

DRAIN = "upload_service.drain"  # lifespan state: called with no arguments as shutdown begins
HEADER_TIMEOUT = "upload_service.header_timeout"  # lifespan state: seconds for a request's headers


def max_upload_size(settings: Settings) -> int | None:
    """``UPLOAD_MAX_SIZE``; on S3 at most its largest object (5 TiB), also when unset."""
    if settings.storage.backend == "s3":
        return min(settings.limits.max_size or MAX_OBJECT_SIZE, MAX_OBJECT_SIZE)
    return settings.limits.max_size


def handler_config(settings: Settings) -> HandlerConfig:
    return HandlerConfig(
        max_size=max_upload_size(settings),
        expire_after=settings.limits.expire_after,
        orphan_grace=settings.limits.orphan_grace,
        checkpoint_bytes=settings.storage.checkpoint_bytes,
        checkpoint_seconds=settings.storage.checkpoint_seconds,
        body_idle_timeout=settings.storage.body_idle_timeout,
        progress_seconds=settings.storage.progress_seconds,
        lock_timeout=settings.locking.timeout,
        relative_location=settings.server.relative_location,
        max_metadata_bytes=settings.limits.max_metadata_bytes,
        max_metadata_keys=settings.limits.max_metadata_keys,
        allowed_types=settings.limits.allowed_types,
        quota=(
            Quota(uploads=settings.limits.quota_uploads, bytes=settings.limits.quota_bytes)
            if settings.limits.quota_uploads is not None or settings.limits.quota_bytes is not None
            else None
        ),
        verify_wait=settings.api.download_verify_wait,
        direct_url_ttl=settings.s3.direct_url_ttl,
    )


def build_locker(settings: Settings) -> Locker:
    if settings.effective_locker == "postgres":
        # Only then: asyncpg, which the database's engine has loaded already for a postgres URL
        from upload_service.locking.postgres import PostgresLocker

        dead_after = settings.locking.dead_after
        return PostgresLocker(
            settings.database.url,
            heartbeat=dead_after / 10,
            timeout=dead_after / 5,
            dead_after=dead_after,
        )
    return FileLocker(settings.storage.data_dir / "locks")


def connect_s3(settings: Settings) -> ObjectClient:
    """The S3 client the settings describe. boto3 is imported here, so a service on local
    storage never loads it (about 100 ms and 20 MiB)."""
    from upload_service.storage.s3.boto import Boto3ObjectClient

    return Boto3ObjectClient.connect(
        endpoint_url=settings.s3.endpoint_url,
        public_endpoint_url=settings.s3.public_endpoint_url,
        region=settings.s3.region,
        path_style=settings.s3.path_style,
        checksums=settings.s3.checksums,
    )


async def build_store(settings: Settings) -> Store:
    if settings.storage.backend == "s3":
        await anyio.Path(settings.storage.spool_dir).mkdir(parents=True, exist_ok=True)
        # boto3 is imported and reads its service models from disk: in a thread, not on the loop
        client = await anyio.to_thread.run_sync(connect_s3, settings)
        return S3Store(
            client,
            settings.s3.bucket,
            settings.s3.prefix,
            part_size=settings.s3.part_size,
            spool_dir=settings.storage.spool_dir,
            concurrency=settings.s3.concurrency,
            max_size=max_upload_size(settings) or MAX_OBJECT_SIZE,
        )
    await anyio.Path(settings.storage.files_dir).mkdir(parents=True, exist_ok=True)
    return LocalStore(
        settings.storage.files_dir,
        buffer_size=settings.storage.write_buffer,
        min_free=settings.storage.min_free_bytes,
        reserve_space=settings.storage.reserve_space,
    )


@asynccontextmanager
async def open_services(
    settings: Settings, runner: Runner | None = None, events: Events = NO_EVENTS
) -> AsyncIterator[Services]:
    """Build everything the service runs on, check the schema, and tear it all down after."""
    await anyio.Path(settings.storage.data_dir).mkdir(parents=True, exist_ok=True)
    busy_timeout = settings.database.busy_timeout
    engine = create_engine(settings.database.url, busy_timeout=busy_timeout)
    transactions = create_transactions(engine, busy_timeout=busy_timeout)
    try:
        await check_schema(engine)
        await check_storage(engine, settings.storage.backend)
        # with hooks configured, the transitions they hear about write their events
        repository = SqlUploadRepository(transactions, events=settings.hooks.events_enabled)
        store = await build_store(settings)
        locker: Locker = build_locker(settings)
        if events is not NO_EVENTS:
            locker = MeteredLocker(locker, events)
        try:
            async with open_hooks(settings, repository, utcnow, events) as hooks:
                handler = TusHandler(
                    store=store,
                    repository=repository,
                    locker=locker,
                    config=handler_config(settings),
                    runner=runner,
                    events=events,
                    pre_create=hooks.pre_create,
                    video=await build_prober(
                        settings.video.probe, settings.video.ffprobe, settings.video.probe_timeout
                    ),
                )
                yield Services(
                    settings=settings,
                    engine=engine,
                    repository=repository,
                    store=store,
                    locker=locker,
                    handler=handler,
                    outbox=repository,
                    drainer=hooks.drainer,
                    tickets=repository,
                )
        finally:
            await locker.aclose()
            await store.aclose()
    finally:
        await transactions.aclose()
        await engine.dispose()


async def expire_periodically(lifecycle: Lifecycle, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        try:
            await lifecycle.expire()
        except ServiceError as exc:
            logger.error("clean-up failed: %s", exc.message)


async def settle_periodically(direct: DirectUploads, interval: float) -> None:
    """Form-POST direct uploads tell the service nothing when their object arrives: look."""
    while True:
        await anyio.sleep(interval)
        try:
            await direct.settle_posts()
        except ServiceError as exc:
            logger.error("looking for direct uploads' objects failed: %s", exc.message)


def drain_uploads(handler: TusHandler) -> None:
    """Shutdown: every running PATCH commits what it received and answers (``TusHandler.drain``)."""
    if not handler.draining:
        logger.info("shutting down: %d running uploads asked to commit and answer", handler.drain())


def create_app(settings: Settings | None = None, *, settle_heap: bool = True) -> FastAPI:
    """The app on ``settings`` (else the environment's). ``settle_heap``: collect and freeze the
    heap once start-up is done (``upload_service.ops.heap``); a process that builds many apps, such as
    the test suite, turns it off."""
    resolved = settings if settings is not None else load_settings()
    metrics = _build_metrics(resolved)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        _honour_asyncio_debug()
        runner = TaskRunner()
        # Background work stops (runner) before what it uses closes (services).
        events: Events = NO_EVENTS if metrics is None else metrics
        # Authentication first: a service that must not run open stops before touching anything.
        with StartUpHeap(enabled=settle_heap) as heap:
            async with (
                open_auth(resolved) as auth,
                open_services(resolved, runner, events) as built,
                runner.running(),
            ):
                tickets = None
                if built.tickets is not None:
                    tickets = TicketAuthenticator(built.tickets, built.handler.clock)
                services = replace(built, auth=replace(auth, tickets=tickets))
                reconciled = await services.handler.reconcile_all()
                logger.info("reconciled %d unfinished uploads with storage", reconciled)
                if asyncio.get_running_loop().get_debug():
                    logger.warning("asyncio debug mode is on")
                lifecycle = services.handler.lifecycle
                runner.start_service(
                    partial(expire_periodically, lifecycle, resolved.limits.cleanup_interval),
                    "clean-up",
                )
                if services.handler.direct.available:
                    runner.start_service(
                        partial(
                            settle_periodically,
                            services.handler.direct,
                            resolved.s3.direct_poll_interval,
                        ),
                        "direct uploads",
                    )
                if metrics is not None:
                    runner.start_service(partial(measure_loop_lag, metrics), "event-loop lag")
                if services.drainer is not None:
                    runner.start_service(services.drainer.run, "hook delivery")
                app.state.services = services
                app.state.runner = runner
                await heap.settle()
                try:
                    # The server calls this as its shutdown begins (``serving``): before it waits for
                    # requests, not after, as the lifespan's own exit would.
                    yield {
                        DRAIN: partial(drain_uploads, services.handler),
                        HEADER_TIMEOUT: resolved.server.header_timeout,
                    }
                finally:
                    if metrics is not None:
                        metrics.close()

    app = FastAPI(
        title="upload_service",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served with local assets instead (api/docs.py)
        redoc_url=None,
        openapi_url=OPENAPI_PATH,
    )
    app.include_router(api_router)
    app.include_router(page_router(resolved))
    app.include_router(listing_router)
    app.include_router(progress_router)
    mount_docs(app, tus_paths(resolved.server.base_path))
    app.include_router(forms_router)
    app.include_router(tickets_router)
    app.include_router(companion_router)
    errors = ErrorRenderer(resolved.server.base_path)
    app.add_exception_handler(ServiceError, errors.service_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, errors.http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, errors.validation_error)  # type: ignore[arg-type]
    # Innermost: the tus endpoints answer below every middleware, in front of the router.
    app.add_middleware(TusEndpoints, base_path=resolved.server.base_path)
    if resolved.server.shed_latency > 0:
        # Right outside what answers, so the metrics, the log and Tus-Resumable see its 503s.
        pressure = Pressure(resolved.server.shed_latency)
        app.add_middleware(LoadShedding, pressure=pressure, render=errors.service_error)
    if metrics is not None:
        app.add_route(
            "/metrics", MetricsEndpoint(metrics).get, methods=["GET"], include_in_schema=False
        )
        # Inside MethodOverrideMiddleware, which copies the scope: the route that the tus
        # endpoints or the router leave in it is read here.
        app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(TusResumableMiddleware, base_path=resolved.server.base_path)
    app.add_middleware(MethodOverrideMiddleware)
    if resolved.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(resolved.server.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"],
            # Uppy-Versions: what Uppy 5's companion client sends to a companion endpoint
            allow_headers=[*REQUEST_HEADERS, REQUEST_ID_HEADER, "Uppy-Versions"],
            expose_headers=[*RESPONSE_HEADERS, REQUEST_ID_HEADER],
            max_age=86400,
        )
    # Inside the proxy middleware (its client address is logged), outside everything that answers.
    app.add_middleware(RequestLogMiddleware, access_log=resolved.observability.access_log)
    # Every layer inside sees the scheme, host, prefix and client the proxy reported.
    app.add_middleware(
        ProxyHeadersMiddleware, trusted=TrustedProxies(resolved.server.trusted_proxies)
    )
    # Outermost: nosniff and a policy on every answer, whichever layer made it.
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _build_metrics(settings: Settings) -> PrometheusMetrics | None:
    if not settings.observability.metrics:
        return None
    return PrometheusMetrics()


class MetricsEndpoint:
    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    async def get(self, request: Request) -> Response:
        # Multi-process mode reads one file per worker and metric: not on the loop.
        body = await anyio.to_thread.run_sync(self.metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)


def _honour_asyncio_debug() -> None:
    """Turn on asyncio debug mode when ``PYTHONASYNCIODEBUG`` or ``-X dev`` asks for it.

    uvicorn on Python 3.11 runs the loop through ``asyncio.Runner(debug=False)``, which switches
    debug mode off again after the loop (uvloop included) honoured the environment.
    """
    requested = sys.flags.dev_mode or (
        not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    )
    if requested:
        asyncio.get_running_loop().set_debug(True)


class ErrorRenderer:
    """The one exception handler family: tus paths get a one-line text body and
    ``Tus-Resumable``, the JSON API a JSON body."""

    def __init__(self, base_path: str) -> None:
        self.base_path = base_path

    async def service_error(self, request: Request, exc: ServiceError) -> Response:
        if under(route_path(request.scope), self.base_path):
            return error_response(request, exc)
        if exc.status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        body = {"error": {"code": exc.code, "message": exc.message}}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    async def validation_error(self, request: Request, exc: RequestValidationError) -> Response:
        """A query parameter FastAPI could not parse: a 400 naming it, in our one format."""
        first = exc.errors()[0] if exc.errors() else {}
        location = first.get("loc", ())
        name = str(location[1] if len(location) > 1 else "request")  # ("query", name, index)
        message = f"{name}: {first.get('msg', 'invalid value')}"
        return await self.service_error(request, BadRequest(message))

    async def http_error(self, request: Request, exc: StarletteHTTPException) -> Response:
        """Routing errors (unknown path, method) in the same one family and format as ours (a
        tus resource's 405 is ``TusEndpoints``'s: no route of the router lies under the base
        path)."""
        headers = dict(exc.headers or {})
        message = f"{request.method} is not allowed here" if exc.status_code == 405 else exc.detail
        error = ServiceError(message, status=exc.status_code, code="http_error", headers=headers)
        return await self.service_error(request, error)
