"""Helpers shared by the HTTP-level tus tests: requests, stored-state snapshots, custom apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import anyio
import httpx
from sqlalchemy import func, select, update

from tests.conftest import TUS
from upload_service.app import create_app
from upload_service.db.models import UploadRow
from upload_service.services import Services
from upload_service.settings import Settings
from upload_service.uploads import Upload

OFFSET_CT = "application/offset+octet-stream"
BASE_URL = "http://testserver"


@dataclass(frozen=True)
class Served:
    client: httpx.AsyncClient
    services: Services


@asynccontextmanager
async def serve(settings: Settings, *, settle_heap: bool = False) -> AsyncIterator[Served]:
    """A per-test app built from ``settings``, with its lifespan running, and a client on it
    (``settle_heap``: as a server process does, see ``upload_service.ops.heap``)."""
    application = create_app(settings, settle_heap=settle_heap)
    async with application.router.lifespan_context(application):
        services: Services = application.state.services
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            yield Served(http, services)


def reason(response: httpx.Response) -> str:
    """The one-line reason text of a tus error response."""
    text = response.text
    assert text.endswith("\n")
    assert text.count("\n") == 1
    return text.strip()


async def create(
    client: httpx.AsyncClient,
    length: int | None = 10,
    *,
    metadata: str | None = None,
    body: bytes | None = None,
) -> str:
    """POST a new upload (``length`` None: deferred) and return its id."""
    headers = dict(TUS)
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    if body is not None:
        headers["Content-Type"] = OFFSET_CT
    response = await client.post("/files/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    prefix = f"{BASE_URL}/files/"
    assert location.startswith(prefix)
    return location.removeprefix(prefix)


async def patch(
    client: httpx.AsyncClient,
    upload_id: str,
    offset: int | str,
    data: bytes | AsyncIterator[bytes] = b"",
    **extra: str,
) -> httpx.Response:
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT}
    headers.update({name.replace("_", "-"): value for name, value in extra.items()})
    return await client.patch(f"/files/{upload_id}", headers=headers, content=data)


async def head(client: httpx.AsyncClient, upload_id: str) -> httpx.Response:
    return await client.head(f"/files/{upload_id}", headers=TUS)


async def stored_bytes(services: Services, upload_id: str) -> bytes | None:
    """The bytes on disk for the upload, or None when it has no file."""
    path = anyio.Path(services.settings.storage.files_dir / upload_id)
    if not await path.exists():
        return None
    return await path.read_bytes()


@dataclass(frozen=True)
class Snapshot:
    data: bytes | None
    record: Upload | None


async def snapshot(services: Services, upload_id: str) -> Snapshot:
    return Snapshot(
        await stored_bytes(services, upload_id), await services.repository.get(upload_id)
    )


async def record(services: Services, upload_id: str) -> Upload:
    upload = await services.repository.get(upload_id)
    assert upload is not None
    return upload


async def count_uploads(services: Services) -> int:
    async with services.engine.connect() as connection:
        count = await connection.scalar(select(func.count()).select_from(UploadRow))
    assert count is not None
    return int(count)


async def stored_files(services: Services) -> list[str]:
    directory = anyio.Path(services.settings.storage.files_dir)
    return sorted([path.name async for path in directory.iterdir()])


async def set_expires_at(services: Services, upload_id: str, moment: datetime) -> None:
    async with services.engine.begin() as connection:
        await connection.execute(
            update(UploadRow).where(UploadRow.id == upload_id).values(expires_at=moment)
        )
