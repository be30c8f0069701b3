"""``GET /api/uploads/{id}/events`` over real HTTP: two app instances on one database (two
replicas) served by uvicorn on 127.0.0.1, an upload PATCHed through one while the other streams
its progress to an httpx client as Server-Sent Events."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from tests.conftest import TUS, make_settings
from upload_service.app import create_app
from upload_service.auth.apikey import hash_key
from upload_service.settings import Settings

pytestmark = pytest.mark.anyio

OFFSET_CT = "application/offset+octet-stream"
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[str]:
    """A uvicorn server of a new app on a free loopback port, in this event loop; its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, settle_heap=False), log_config=None, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@dataclass
class Stream:
    status: int = 0
    content_type: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # JSON data
    comments: list[str] = field(default_factory=list)


async def follow(client: httpx.AsyncClient, url: str, into: Stream, **headers: str) -> None:
    """Read the event stream at ``url`` until the server ends it."""
    async with client.stream("GET", url, headers=headers) as response:
        into.status = response.status_code
        into.content_type = response.headers["content-type"]
        if response.status_code != 200:
            await response.aread()
            return
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith(":"):
                into.comments.append(line)
            elif line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                into.events.append((kind, json.loads(line.removeprefix("data: "))))


async def test_progress_streams_from_another_replica_while_an_upload_progresses(
    data_dir: Path, database_url: str
) -> None:
    settings = make_settings(
        data_dir,
        database_url,
        progress_seconds=0.01,
        checkpoint_bytes=1024 * 1024 * 1024,
        checkpoint_seconds=0.2,
        sse_poll_interval=0.02,
        sse_heartbeat=0.2,
    )
    size = 40_000
    async with (
        running(settings) as uploader,
        running(settings) as watcher,
        httpx.AsyncClient(timeout=30) as client,
    ):
        created = await client.post(
            f"{uploader}/files/", headers={**TUS, "Upload-Length": str(size)}
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        stream = Stream()

        async def body() -> AsyncIterator[bytes]:
            for piece in range(size // 1000):
                yield b"x" * 1000
                await anyio.sleep(0.6 if piece == 20 else 0.02)  # one quiet spell: a heartbeat

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    follow, client, f"{watcher}/api/uploads/{upload_id}/events", stream
                )
                await anyio.sleep(0.2)
                patched = await client.patch(
                    f"{uploader}/files/{upload_id}",
                    headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
                    content=body(),
                )
                assert patched.status_code == 204
        # the stream ended by itself after the final state
        assert stream.status == 200
        assert stream.content_type.startswith("text/event-stream")
        kinds = [kind for kind, _ in stream.events]
        assert kinds[0] == "state"
        assert stream.events[0][1]["state"] == "receiving"
        assert stream.events[0][1]["received"] == 0
        last_kind, last = stream.events[-1]
        assert last_kind == "state"
        assert last["state"] == "ready"
        assert last["offset"] == last["received"] == size
        assert isinstance(last["sha256"], str)
        assert len(last["sha256"]) == 64
        progress = [data["received"] for kind, data in stream.events if kind == "progress"]
        assert len(progress) >= 3  # seen moving, from the other replica, before the end
        assert progress == sorted(progress)
        assert any(0 < int(received) < size for received in progress)
        offsets = [int(data["offset"]) for _, data in stream.events]
        assert offsets == sorted(offsets)
        assert stream.comments  # the quiet spell had a heartbeat


async def test_a_finished_upload_streams_its_state_and_ends(
    data_dir: Path, database_url: str
) -> None:
    settings = make_settings(data_dir, database_url, sse_poll_interval=0.02)
    async with running(settings) as server, httpx.AsyncClient(timeout=30) as client:
        created = await client.post(
            f"{server}/files/",
            headers={**TUS, "Upload-Length": "3", "Content-Type": OFFSET_CT},
            content=b"abc",
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        stream = Stream()
        with anyio.fail_after(10):
            await follow(client, f"{server}/api/uploads/{upload_id}/events", stream)
        assert [(kind, data["state"]) for kind, data in stream.events] == [("state", "ready")]

        terminated = await client.post(f"{server}/files/", headers={**TUS, "Upload-Length": "3"})
        terminated_id = terminated.headers["Location"].rsplit("/", 1)[1]
        stream = Stream()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    follow, client, f"{server}/api/uploads/{terminated_id}/events", stream
                )
                await anyio.sleep(0.2)
                deleted = await client.delete(f"{server}/files/{terminated_id}", headers=TUS)
                assert deleted.status_code == 204
        assert [data["state"] for _, data in stream.events] == ["receiving", "terminated"]

        unknown = Stream()
        await follow(client, f"{server}/api/uploads/{'0' * 32}/events", unknown)
        assert unknown.status == 404
        assert unknown.content_type == "application/json"


async def test_events_honour_ownership_and_a_client_can_leave(
    data_dir: Path, database_url: str
) -> None:
    settings = make_settings(
        data_dir,
        database_url,
        auth_api_keys=f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}",
        auth_signing_key="a-signing-key-for-download-urls-32+",
        sse_poll_interval=0.02,
    )
    async with running(settings) as server, httpx.AsyncClient(timeout=30) as client:
        created = await client.post(
            f"{server}/files/",
            headers={**TUS, "Upload-Length": "3", "Authorization": f"Bearer {ALICE}"},
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        url = f"{server}/api/uploads/{upload_id}/events"
        for headers, status in (({}, 401), ({"Authorization": f"Bearer {BOB}"}, 404)):
            refused = Stream()
            await follow(client, url, refused, **headers)
            assert refused.status == status

        # alice's stream stays open while nothing happens; she closes it after the first event
        with anyio.fail_after(10):
            async with client.stream(
                "GET", url, headers={"Authorization": f"Bearer {ALICE}"}
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        assert json.loads(line.removeprefix("data: "))["state"] == "receiving"
                        break
        # the server is still well and stops promptly (no stream left behind holds it)
        assert (await client.get(f"{server}/healthz")).status_code == 200
