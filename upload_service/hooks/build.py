"""The hooks as the settings ask for them, built by the app's lifespan (nothing at import time):
the pre-create hook the tus handler calls, and the drainer that delivers the outbox."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from upload_service.events import NO_EVENTS, Events
from upload_service.hooks.callables import PREFIX, HookConfigError, load_callable
from upload_service.hooks.delivery import Deliverer, Drainer, PostCallable
from upload_service.hooks.pre_create import (
    NO_PRE_CREATE,
    CallablePreCreate,
    MetadataLimits,
    PreCreateHook,
)
from upload_service.outbox import Outbox
from upload_service.settings import Settings

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True, slots=True)
class Hooks:
    pre_create: PreCreateHook = NO_PRE_CREATE
    drainer: Drainer | None = None  # None: events are off (no URL, no post callable)


@asynccontextmanager
async def open_hooks(
    settings: Settings,
    outbox: Outbox | None,
    clock: Callable[[], datetime],
    events: Events = NO_EVENTS,
) -> AsyncIterator[Hooks]:
    """Load the hooks the settings name (``HookConfigError`` names a setting that cannot be
    loaded) and close their HTTP client after."""
    uses_http = settings.hooks.url or settings.hooks.pre_create.startswith(("http://", "https://"))
    client = None
    if uses_http:
        # httpx and the HTTP hooks only when a hook is a URL, imported in a thread (reading files)
        await anyio.to_thread.run_sync(importlib.import_module, "upload_service.hooks.http")
        import httpx

        client = httpx.AsyncClient(follow_redirects=False)
    try:
        yield Hooks(
            pre_create=await _pre_create(settings, client, events),
            drainer=await _drainer(settings, client, outbox, clock, events),
        )
    finally:
        if client is not None:
            await client.aclose()


async def _load(spec: str, variable: str) -> Callable[..., Any]:
    # importing the hook's module reads files: not on the loop
    return await anyio.to_thread.run_sync(partial(load_callable, spec, variable))


async def _pre_create(
    settings: Settings, client: httpx.AsyncClient | None, events: Events
) -> PreCreateHook:
    spec = settings.hooks.pre_create
    limits = MetadataLimits(settings.limits.max_metadata_bytes, settings.limits.max_metadata_keys)
    if not spec:
        return NO_PRE_CREATE
    if spec.startswith(PREFIX):
        function = await _load(spec, "UPLOAD_HOOK_PRE_CREATE")
        return CallablePreCreate(
            function, timeout=settings.hooks.timeout, limits=limits, events=events
        )
    assert client is not None
    from upload_service.hooks.http import HttpPreCreate

    return HttpPreCreate(
        client,
        spec,
        timeout=settings.hooks.timeout,
        limits=limits,
        secret=settings.hooks.secret.get_secret_value(),
        events=events,
    )


async def _drainer(
    settings: Settings,
    client: httpx.AsyncClient | None,
    outbox: Outbox | None,
    clock: Callable[[], datetime],
    events: Events,
) -> Drainer | None:
    if not settings.hooks.events_enabled:
        return None
    if outbox is None:
        raise HookConfigError("UPLOAD_HOOK_URL / UPLOAD_HOOK_POST: this repository has no outbox")
    deliverers: list[Deliverer] = []
    if settings.hooks.url:
        assert client is not None
        from upload_service.hooks.http import Webhook

        secret = settings.hooks.secret.get_secret_value()
        deliverers.append(
            Webhook(client, settings.hooks.url, secret=secret, timeout=settings.hooks.timeout)
        )
    if settings.hooks.post:
        function = await _load(settings.hooks.post, "UPLOAD_HOOK_POST")
        deliverers.append(PostCallable(function, timeout=settings.hooks.post_timeout))
    return Drainer(
        outbox,
        deliverers,
        clock=clock,
        max_attempts=settings.hooks.max_attempts,
        retry_delay=settings.hooks.retry_delay,
        poll_interval=settings.hooks.poll_interval,
        retention=settings.hooks.retention,
        events=events,
    )
