"""Shutdown: the drain hook the app hands the server, and background work inside the database.

The drain hook (lifespan state ``DRAIN``) is what ``serving.DrainingHttpToolsProtocol`` calls as
uvicorn's shutdown begins; the end-to-end test ``tests/e2e/test_shutdown.py`` sends the signal.

The clean-up task runs every millisecond here, so the lifespan's exit cancels it in the middle of a
statement more often than not. A cancellation must never reach SQLAlchemy mid-statement: it then
invalidates the connection and leaves a close of it pending for ever, which once hung a whole run.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from tests.conftest import make_settings
from tests.integrity_helpers import running, status
from tests.tus_http_helpers import create
from upload_service.app import DRAIN, create_app
from upload_service.services import Services

pytestmark = pytest.mark.anyio

ROUNDS = 30


def pending_tasks(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() - before if not task.done()]


async def test_shutdown_mid_statement_leaves_nothing_pending(
    data_dir: Path, database_url: str
) -> None:
    before = asyncio.all_tasks()
    rng = random.Random(4)
    settings = make_settings(data_dir, database_url, cleanup_interval=0.001)
    created: list[str] = []
    for _ in range(ROUNDS):
        async with running(settings) as served:
            for upload_id in created:  # every acknowledged upload survived the last shutdown
                shown = await status(served.client, upload_id)
                assert (shown["state"], shown["offset"]) == ("receiving", 3)
            created.append(await create(served.client, 10, body=b"abc"))
            await anyio.sleep(rng.random() * 0.01)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()  # anything about to finish, finishes
        assert pending_tasks(before) == []


async def test_the_lifespan_hands_the_server_a_drain_hook(
    data_dir: Path, database_url: str
) -> None:
    application = create_app(make_settings(data_dir, database_url), settle_heap=False)
    async with application.router.lifespan_context(application) as state:
        assert state is not None
        services: Services = application.state.services
        assert not services.handler.draining
        drain = state[DRAIN]
        drain()
        drain()  # every connection's shutdown calls it: harmless again
        assert services.handler.draining
