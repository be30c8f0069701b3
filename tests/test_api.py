"""HTTP tests: the JSON API (upload status and progress), /healthz and /readyz."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import create, patch, record, serve
from upload_service.services import Services

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

FIELDS = {
    "id",
    "length",
    "offset",
    "received",
    "state",
    "metadata",
    "created_at",
    "updated_at",
    "expires_at",
    "completed_at",
    "failure",
    "sha256",
    "concat",
    "parts",
    "finals",
    "final_id",
    "state_changed_at",
    "owner",
    "ticket",
    "direct",
    "download_url",
    "video",
}


def moment(value: object) -> datetime:
    assert isinstance(value, str)
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


async def test_upload_status_while_receiving(client: httpx.AsyncClient) -> None:
    name = base64.b64encode("vidéo.mp4".encode()).decode()
    created = await client.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": "10",
            "Upload-Metadata": f"filename {name},flag",
            "Content-Type": "application/offset+octet-stream",
        },
        content=b"abc",
    )
    upload_id = created.headers["Location"].rsplit("/", 1)[1]

    response = await client.get(f"/api/uploads/{upload_id}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == FIELDS
    assert body["id"] == upload_id
    assert body["length"] == 10
    assert body["offset"] == 3
    assert body["received"] == 3
    assert body["state"] == "receiving"
    assert body["metadata"] == {"filename": "vidéo.mp4", "flag": None}
    assert body["completed_at"] is None
    assert body["failure"] is None
    created_at, updated_at = moment(body["created_at"]), moment(body["updated_at"])
    assert created_at <= updated_at
    expires_at = moment(body["expires_at"])
    assert expires_at.replace(microsecond=0) == parsedate_to_datetime(
        created.headers["Upload-Expires"]
    )


async def test_upload_status_when_complete_and_deferred(client: httpx.AsyncClient) -> None:
    deferred = await create(client, None)
    body = (await client.get(f"/api/uploads/{deferred}")).json()
    assert body["length"] is None
    assert body["metadata"] == {}

    done = await create(client, 3, body=b"abc")
    body = (await client.get(f"/api/uploads/{done}")).json()
    assert body["state"] == "ready"
    assert body["offset"] == body["length"] == 3
    assert body["expires_at"] is None
    assert moment(body["completed_at"]) >= moment(body["created_at"])


async def test_terminated_upload_is_still_described(client: httpx.AsyncClient) -> None:
    upload_id = await create(client, 10)
    assert (await client.delete(f"/files/{upload_id}", headers=TUS)).status_code == 204
    body = (await client.get(f"/api/uploads/{upload_id}")).json()
    assert body["state"] == "terminated"


@pytest.mark.parametrize("upload_id", ["0" * 32, "A" * 32, "nope", "%2E%2E"])
async def test_unknown_upload_is_a_json_404(client: httpx.AsyncClient, upload_id: str) -> None:
    response = await client.get(f"/api/uploads/{upload_id}")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "not_found", "message": "no such upload"}}
    assert "Tus-Resumable" not in response.headers


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "detail": None}


async def test_readyz_reports_unreachable_storage(
    client: httpx.AsyncClient, services: Services
) -> None:
    files = anyio.Path(services.settings.storage.files_dir)
    await files.rmdir()
    await files.write_bytes(b"not a directory")
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["detail"].startswith("cannot reach the data directory")


async def test_progress_is_visible_during_a_long_patch(data_dir: Path, database_url: str) -> None:
    settings = make_settings(
        data_dir,
        database_url,
        progress_seconds=0.01,
        checkpoint_seconds=100,
        checkpoint_bytes=1024 * 1024 * 1024,
    )
    async with serve(settings) as served:
        client, services = served.client, served.services
        upload_id = await create(client, 100_000)
        seen = anyio.Event()
        observed: list[tuple[int, int]] = []
        responses: list[httpx.Response] = []

        async def body() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * 1000
                # Longer than progress_seconds, so the next piece triggers a progress write.
                await anyio.sleep(0.02)
            yield b"x" * 1000
            await seen.wait()
            yield b"x" * 6000

        async def upload() -> None:
            responses.append(await patch(client, upload_id, 0, body()))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(upload)
                while not seen.is_set():
                    info = (await client.get(f"/api/uploads/{upload_id}")).json()
                    observed.append((info["offset"], info["received"]))
                    if info["received"] > info["offset"]:
                        seen.set()
                    else:
                        await anyio.sleep(0.01)

        offset, received = observed[-1]
        assert offset == 0  # nothing was checkpointed yet: the durable offset has not moved
        assert 0 < received <= 4000
        assert [r for _, r in observed] == sorted(r for _, r in observed)
        assert responses[0].status_code == 204
        assert responses[0].headers["Upload-Offset"] == "10000"
        final = await record(services, upload_id)
        assert final.offset == final.received == 10000
