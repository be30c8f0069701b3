"""A download of an upload still being verified, or of a final upload being assembled, waits for
the verdict or the assembly (bounded by ``UPLOAD_DOWNLOAD_VERIFY_WAIT``), then answers with the
file, a 410 if it failed, or a 503 with ``Retry-After``: never a bare 409. A final that waits for
parts still receiving is a 409 at once: that may take any time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.test_concatenation import create_final, create_partial
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


# -- a final upload whose parts are complete is being assembled: waited for like a verdict ------


class HeldAssembly:
    """The store's concatenation, held until ``release``: a final stays assembling meanwhile."""

    def __init__(self, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started, self.release = anyio.Event(), anyio.Event()
        concatenate = services.store.concatenate  # type: ignore[attr-defined]

        async def held(*args: object) -> int:
            self.started.set()
            await self.release.wait()
            length: int = await concatenate(*args)
            return length

        monkeypatch.setattr(services.store, "concatenate", held)


async def assembling(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> tuple[HeldAssembly, str]:
    """A final upload of two finished parts (``abc``, ``de``) whose assembly has begun and is
    held: the hold and the final's id."""
    parts = [
        await create_partial(client, 3, body=b"abc"),
        await create_partial(client, 2, body=b"de"),
    ]
    held = HeldAssembly(services, monkeypatch)
    final_id = await create_final(client, *parts)
    with anyio.fail_after(10):
        await held.started.wait()
    return held, final_id


async def test_a_download_of_a_final_being_assembled_waits_and_gets_the_file(
    data_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(make_settings(data_dir, database_url)) as served:
        client, services = served.client, served.services
        held, final_id = await assembling(client, services, monkeypatch)

        async def assembled() -> None:
            held.release.set()

        response = await download_while(client, final_id, assembled)
        assert response.status_code == 200
        assert response.content == b"abcde"


async def test_no_assembly_in_time_is_a_503_with_retry_after(
    data_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(data_dir, database_url, download_verify_wait=0.3)
    async with serve(settings) as served:
        client, services = served.client, served.services
        held, final_id = await assembling(client, services, monkeypatch)
        with anyio.fail_after(10):
            response = await client.get(f"/files/{final_id}", headers=TUS)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert reason(response) == "final upload is being assembled; retry shortly"
        held.release.set()


async def test_a_final_waiting_for_an_unfinished_part_is_a_409_at_once(
    data_dir: Path, database_url: str
) -> None:
    async with serve(make_settings(data_dir, database_url)) as served:
        client = served.client
        parts = [await create_partial(client, 3, body=b"abc"), await create_partial(client, 2)]
        final_id = await create_final(client, *parts)
        with anyio.fail_after(5):  # verify_wait is 10 s: a wait would show
            response = await client.get(f"/files/{final_id}", headers=TUS)
        assert response.status_code == 409
        assert "Retry-After" not in response.headers
        assert reason(response) == "final upload waits for its partial uploads (1 of 2 complete)"
