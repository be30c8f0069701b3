"""HTTP tests: concurrent requests on one upload never interleave bytes and get defined answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import create, head, patch, reason, record, serve, stored_bytes
from upload_service.services import Services

# Locks differ by database (PostgreSQL advisory locks, a file locker beside SQLite): both run.
pytestmark = [pytest.mark.anyio, pytest.mark.every_database]  # anyio: see test_tus_creation.py


class SlowBody:
    """A request body that sends ``first`` and then holds the request open until released."""

    def __init__(self, first: bytes, rest: bytes = b"") -> None:
        self.first = first
        self.rest = rest
        self.sent_first = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = False

    async def stream(self) -> AsyncIterator[bytes]:
        yield self.first
        self.sent_first.set()  # the server asked for more: "first" has been written
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        yield self.rest


async def while_a_patch_holds(
    client: httpx.AsyncClient,
    upload_id: str,
    second: Callable[[], Awaitable[httpx.Response]],
) -> tuple[SlowBody, httpx.Response, httpx.Response]:
    """Start a PATCH whose body stalls after its first 10 bytes, send ``second`` while that one
    holds the upload, and return the slow body and both responses (first, second)."""
    slow = SlowBody(b"a" * 10, b"a" * 10)
    responses: dict[str, httpx.Response] = {}

    async def first() -> None:
        responses["first"] = await patch(client, upload_id, 0, slow.stream())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await slow.sent_first.wait()
            responses["second"] = await second()
    return slow, responses["first"], responses["second"]


async def test_second_patch_preempts_the_first_which_keeps_its_bytes(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 100)
    # Stale offset: the holder is stopped, commits its 10 bytes, and this one gets 409.
    slow, first, stale = await while_a_patch_holds(
        client, upload_id, lambda: patch(client, upload_id, 0, b"b" * 5)
    )

    assert slow.cancelled
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "10"
    assert stale.status_code == 409
    assert reason(stale) == "Upload-Offset 0 does not match the upload's offset 10"
    assert await stored_bytes(services, upload_id) == b"a" * 10
    assert (await record(services, upload_id)).offset == 10


async def test_second_patch_with_the_right_offset_continues_after_the_first(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 100)
    _slow, first, second = await while_a_patch_holds(
        client, upload_id, lambda: patch(client, upload_id, 10, b"b" * 5)
    )

    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "10"
    assert second.status_code == 204
    assert second.headers["Upload-Offset"] == "15"
    assert await stored_bytes(services, upload_id) == b"a" * 10 + b"b" * 5


async def test_second_patch_that_cannot_wait_gets_423(data_dir: Path, database_url: str) -> None:
    async with serve(make_settings(data_dir, database_url, lock_timeout=0)) as served:
        client, services = served.client, served.services
        upload_id = await create(client, 100)
        slow, first, second = await while_a_patch_holds(
            client, upload_id, lambda: patch(client, upload_id, 10, b"b" * 5)
        )

        assert second.status_code == 423
        assert second.headers["Tus-Resumable"] == "1.0.0"
        assert reason(second) == "upload is in use by another request; retry shortly"
        # The holder was still asked to let go, so it stopped after its first piece.
        assert slow.cancelled
        assert first.status_code == 204
        assert first.headers["Upload-Offset"] == "10"
        assert await stored_bytes(services, upload_id) == b"a" * 10
        assert (await record(services, upload_id)).offset == 10


async def test_many_concurrent_patches_never_interleave(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 1000)
    statuses: list[int] = []

    async def send(marker: bytes) -> None:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield marker * 10
                await anyio.lowlevel.checkpoint()

        response = await patch(client, upload_id, 0, body())
        statuses.append(response.status_code)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for marker in (b"a", b"b", b"c", b"d"):
                group.start_soon(send, marker)

    assert set(statuses) <= {204, 409, 423}
    assert 204 in statuses
    data = await stored_bytes(services, upload_id)
    assert data is not None
    upload = await record(services, upload_id)
    assert len(data) == upload.offset
    # Only the request that started at offset 0 may have written, so all bytes are one marker.
    assert len(set(data)) <= 1


async def test_delete_preempts_a_running_patch(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 100)
    _slow, first, deleted = await while_a_patch_holds(
        client, upload_id, lambda: client.delete(f"/files/{upload_id}", headers=TUS)
    )

    assert first.status_code == 204
    assert deleted.status_code == 204
    assert await stored_bytes(services, upload_id) is None
    assert (await head(client, upload_id)).status_code == 410
