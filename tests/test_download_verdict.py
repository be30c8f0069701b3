"""A download of an upload still being verified waits for the verdict (bounded by
``UPLOAD_DOWNLOAD_VERIFY_WAIT``), then answers with the file, a 410 if it failed, or a 503 with
``Retry-After``: never a bare 409."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import create, reason, serve
from upload_service.services import Services
from upload_service.tus.handler import utcnow
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio

DATA = b"verified!"


async def verifying_upload(client: httpx.AsyncClient, services: Services) -> str:
    """An upload whose bytes are all stored and committed, left ``verifying`` (nobody verifies
    it until the test says so)."""
    upload_id = await create(client, len(DATA))
    await anyio.Path(services.settings.storage.files_dir / upload_id).write_bytes(DATA)
    now = utcnow()
    await services.repository.advance(
        upload_id, expected=0, offset=len(DATA), now=now, expires_at=None
    )
    await services.repository.complete(upload_id, now)
    return upload_id


async def download_while(
    client: httpx.AsyncClient, upload_id: str, verdict: Callable[[], Awaitable[None]]
) -> httpx.Response:
    """GET the file, and give the ``verdict`` once the request has been waiting for a while."""
    responses: list[httpx.Response] = []

    async def download() -> None:
        responses.append(await client.get(f"/files/{upload_id}", headers=TUS))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(download)
            await anyio.sleep(0.5)
            assert responses == []  # still waiting for the verdict
            await verdict()
    return responses[0]


async def test_a_download_waits_for_the_verdict_and_gets_the_file(
    data_dir: Path, database_url: str
) -> None:
    async with serve(make_settings(data_dir, database_url)) as served:
        client, services = served.client, served.services
        upload_id = await verifying_upload(client, services)

        async def verify() -> None:
            await services.repository.mark_ready(upload_id, "00" * 32, utcnow())

        response = await download_while(client, upload_id, verify)
        assert response.status_code == 200
        assert response.content == DATA


async def test_a_verification_that_fails_meanwhile_is_a_410(
    data_dir: Path, database_url: str
) -> None:
    async with serve(make_settings(data_dir, database_url)) as served:
        client, services = served.client, served.services
        upload_id = await verifying_upload(client, services)

        async def fail() -> None:
            await services.repository.fail(
                upload_id, "sha256 mismatch", utcnow(), only_from=(UploadState.VERIFYING,)
            )

        response = await download_while(client, upload_id, fail)
        assert response.status_code == 410
        assert reason(response) == "upload failed: sha256 mismatch"


@pytest.mark.parametrize("wait", [0.0, 0.3])
async def test_no_verdict_in_time_is_a_503_with_retry_after(
    data_dir: Path, database_url: str, wait: float
) -> None:
    settings = make_settings(data_dir, database_url, download_verify_wait=wait)
    async with serve(settings) as served:
        client, services = served.client, served.services
        upload_id = await verifying_upload(client, services)
        with anyio.fail_after(10):
            response = await client.get(f"/files/{upload_id}", headers=TUS)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert reason(response) == "upload is complete and being verified; retry shortly"
        assert (await services.repository.get(upload_id)).state is UploadState.VERIFYING  # type: ignore[union-attr]
