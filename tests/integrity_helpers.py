"""Helpers for the integrity tests (checksums, concatenation, states): digests computed
independently of the service, a PATCH that breaks off through raw ASGI, and status polling."""

from __future__ import annotations

import base64
import hashlib
import random
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from starlette.types import Message, Scope

from tests.tus_http_helpers import BASE_URL, OFFSET_CT
from upload_service.app import create_app
from upload_service.services import Services
from upload_service.settings import Settings

ALGORITHMS = ("sha1", "sha256", "sha512", "md5", "crc32")
KiB = 1024
MiB = 1024 * KiB


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def raw_digest(algorithm: str, data: bytes) -> bytes:
    """The digest the tus checksum extension expects, computed here, not by the service."""
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def checksum(algorithm: str, data: bytes) -> str:
    """An ``Upload-Checksum`` value for ``data``."""
    return f"{algorithm} {base64.b64encode(raw_digest(algorithm, data)).decode('ascii')}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def patch_then_disconnect(
    app: FastAPI,
    upload_id: str,
    offset: int,
    pieces: Sequence[bytes],
    headers: Mapping[str, str] | None = None,
) -> list[Message]:
    """A PATCH whose body stops after ``pieces`` because the client went away (raw ASGI: httpx
    cannot drop a connection halfway through a body). Returns what the app sent back."""
    incoming: deque[Message] = deque(
        {"type": "http.request", "body": piece, "more_body": True} for piece in pieces
    )
    incoming.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.popleft()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    path = f"/files/{upload_id}"
    raw_headers = [
        (b"host", b"testserver"),
        (b"tus-resumable", b"1.0.0"),
        (b"upload-offset", str(offset).encode()),
        (b"content-type", OFFSET_CT.encode()),
        (b"transfer-encoding", b"chunked"),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PATCH",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    with anyio.fail_after(30):
        await app(scope, receive, send)
    assert not incoming, "the app stopped reading before the disconnect"
    return sent


async def status(client: httpx.AsyncClient, upload_id: str) -> dict[str, Any]:
    """``GET /api/uploads/{id}`` as JSON."""
    response = await client.get(f"/api/uploads/{upload_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def settled(app: FastAPI, client: httpx.AsyncClient, upload_id: str) -> dict[str, Any]:
    """The upload's status once the app's background work (verification, assembly) is done."""
    with anyio.fail_after(30):
        await app.state.runner.wait_idle()
    return await status(client, upload_id)


@dataclass(frozen=True)
class Running:
    app: FastAPI
    client: httpx.AsyncClient
    services: Services


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """Like ``serve``, and with the app (for its runner): a fresh process on ``settings``."""
    application = create_app(settings, settle_heap=False)
    async with application.router.lifespan_context(application):
        services: Services = application.state.services
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            yield Running(application, http, services)


async def sha256_when_ready(client: httpx.AsyncClient, upload_id: str, guard: float = 60.0) -> str:
    """The upload's sha256 once the JSON API shows it ``ready`` (it may be ``verifying`` before:
    any other state fails)."""
    with anyio.fail_after(guard):
        while True:
            shown = (await client.get(f"/api/uploads/{upload_id}")).json()
            if shown["state"] == "ready":
                return str(shown["sha256"])
            assert shown["state"] == "verifying", shown
            await anyio.sleep(0.02)
