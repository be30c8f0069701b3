"""Upload states as ``GET /api/uploads/{id}`` shows them: receiving → verifying → ready with the
whole-file sha256 (streamed or read back), the expected digest in metadata, failed uploads, the
digest on download, expiry clean-up (background, ``lifecycle.expire`` and the CLI) and start-up."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from tests.conftest import TUS, make_settings
from tests.integrity_helpers import (
    KiB,
    MiB,
    Running,
    checksum,
    random_bytes,
    running,
    settled,
    sha256_hex,
    status,
)
from tests.tus_http_helpers import (
    OFFSET_CT,
    count_uploads,
    create,
    head,
    patch,
    reason,
    record,
    set_expires_at,
    stored_bytes,
    stored_files,
)
from upload_service.cli import main
from upload_service.db.models import UploadRow
from upload_service.services import Services
from upload_service.settings import Settings, load_settings
from upload_service.storage.base import Digester, Hasher, StorageKey
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
GUARD = 30.0  # deadlock guard; no test measures time


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def past() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=1)


class DigestSpy:
    """Wraps the store's read-back digest: counts calls and can hold them until released."""

    def __init__(self, services: Services, monkeypatch: pytest.MonkeyPatch, *, hold: bool) -> None:
        self.calls = 0
        self.started = anyio.Event()
        self.release = anyio.Event()
        if not hold:
            self.release.set()
        assert isinstance(services.store, Digester)
        self._inner = services.store.digest
        monkeypatch.setattr(services.store, "digest", self)

    async def __call__(self, key: StorageKey, hasher: Hasher) -> bytes:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return await self._inner(key, hasher)


# -- receiving → verifying → ready --------------------------------------------------------------


async def test_streamed_digest_receiving_then_ready(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DigestSpy(services, monkeypatch, hold=False)
    data = random_bytes(3 * MiB + 11, seed=1)
    upload_id = await create(client, len(data))
    fresh = await status(client, upload_id)
    assert fresh["state"] == "receiving"
    assert fresh["sha256"] is None
    assert fresh["completed_at"] is None

    cuts = [0, 1, 64 * KiB, MiB + 5, 2 * MiB + 999, len(data)]
    for start, end in itertools.pairwise(cuts):
        if end < len(data):
            assert (await status(client, upload_id))["state"] == "receiving"
        assert (await patch(client, upload_id, start, data[start:end])).status_code == 204

    # The running digest saw every byte: the upload is verified before the last PATCH answers.
    shown = await status(client, upload_id)
    assert shown["state"] == "ready"
    assert shown["sha256"] == sha256_hex(data)
    assert shown["completed_at"] is not None
    assert shown["state_changed_at"] is not None
    assert spy.calls == 0


async def test_lost_running_digest_is_read_back_and_verifying_is_visible(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_bytes(2 * MiB + 3, seed=2)
    half = MiB + 1
    async with running(settings) as first:
        upload_id = await create(first.client, len(data))
        assert (await patch(first.client, upload_id, 0, data[:half])).status_code == 204

    # A fresh process: it never saw the first half, so it cannot stream the whole-file digest.
    async with running(settings) as second:
        spy = DigestSpy(second.services, monkeypatch, hold=True)
        response = await patch(second.client, upload_id, half, data[half:])
        assert response.status_code == 204
        assert response.headers["Upload-Offset"] == str(len(data))
        with anyio.fail_after(GUARD):
            await spy.started.wait()
        shown = await status(second.client, upload_id)
        assert shown["state"] == "verifying"
        assert shown["sha256"] is None
        assert shown["offset"] == len(data)
        assert (await head(second.client, upload_id)).headers["Upload-Offset"] == str(len(data))
        # a download meanwhile waits for the verdict (UPLOAD_DOWNLOAD_VERIFY_WAIT), never a 409
        downloads: list[httpx.Response] = []

        async def download() -> None:
            downloads.append(await second.client.get(f"/files/{upload_id}"))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(download)
                await anyio.sleep(0.3)
                assert downloads == []
                spy.release.set()
        assert downloads[0].status_code == 200
        assert downloads[0].content == data
        shown = await settled(second.app, second.client, upload_id)
        assert shown["state"] == "ready"
        assert shown["sha256"] == sha256_hex(data)
        assert spy.calls == 1
        assert (await second.client.get(f"/files/{upload_id}")).content == data


async def test_digest_is_right_after_a_rejected_chunk(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    data = random_bytes(2 * MiB, seed=3)
    upload_id = await create(client, len(data))
    assert (await patch(client, upload_id, 0, data[:MiB])).status_code == 204
    rest = data[MiB:]
    bad = await patch(client, upload_id, MiB, rest, Upload_Checksum=checksum("sha1", rest[1:]))
    assert bad.status_code == 460
    good = await patch(client, upload_id, MiB, rest, Upload_Checksum=checksum("sha1", rest))
    assert good.status_code == 204
    shown = await settled(app, client, upload_id)
    assert shown["state"] == "ready"
    assert shown["sha256"] == sha256_hex(data)


# -- the expected digest in metadata ------------------------------------------------------------


@asynccontextmanager
async def uploaded(
    settings: Settings, data: bytes, metadata: str, *, restart: bool
) -> AsyncIterator[tuple[Running, str]]:
    """Create and send ``data`` in two PATCHes; with ``restart`` the second goes to a fresh app
    (so the digest is read back). Yields the app that received the end, once it settled."""
    half = len(data) // 2
    upload_id: str | None = None
    if restart:
        async with running(settings) as first:
            upload_id = await create(first.client, len(data), metadata=metadata)
            assert (await patch(first.client, upload_id, 0, data[:half])).status_code == 204
    async with running(settings) as current:
        if upload_id is None:
            upload_id = await create(current.client, len(data), metadata=metadata)
            assert (await patch(current.client, upload_id, 0, data[:half])).status_code == 204
        assert (await patch(current.client, upload_id, half, data[half:])).status_code == 204
        await settled(current.app, current.client, upload_id)
        yield current, upload_id


PATHS = pytest.mark.parametrize("restart", [False, True], ids=["streamed", "read-back"])


@PATHS
@pytest.mark.parametrize("encoding", ["hex", "HEX", "base64"])
async def test_expected_digest_in_metadata_matches(
    settings: Settings, restart: bool, encoding: str
) -> None:
    data = random_bytes(300 * KiB, seed=4)
    digest = hashlib.sha256(data).digest()
    stated = {"hex": digest.hex(), "HEX": digest.hex().upper(), "base64": b64(digest)}[encoding]
    metadata = f"sha256 {b64(stated.encode())},filename {b64(b'a.bin')}"
    async with uploaded(settings, data, metadata, restart=restart) as (current, upload_id):
        shown = await status(current.client, upload_id)
        assert shown["state"] == "ready"
        assert shown["sha256"] == digest.hex()
        assert shown["failure"] is None
        assert shown["metadata"]["sha256"] == stated
        assert (await current.client.get(f"/files/{upload_id}")).content == data


@PATHS
async def test_a_mismatching_expected_digest_fails_the_upload(
    settings: Settings, restart: bool
) -> None:
    data = random_bytes(300 * KiB, seed=5)
    wrong = hashlib.sha256(data + b"!").hexdigest()
    metadata = f"sha256 {b64(wrong.encode())}"
    async with uploaded(settings, data, metadata, restart=restart) as (current, upload_id):
        client = current.client
        shown = await status(client, upload_id)
        assert shown["state"] == "failed"
        expected_reason = f"sha256 mismatch: expected {wrong}, got {sha256_hex(data)}"
        assert shown["failure"] == expected_reason
        assert shown["sha256"] is None
        download = await client.get(f"/files/{upload_id}")
        assert download.status_code == 410
        assert reason(download) == f"upload failed: {expected_reason}"
        assert (await head(client, upload_id)).status_code == 410
        again = await patch(client, upload_id, len(data), b"")
        assert again.status_code == 410
        assert reason(again) == f"upload failed: {expected_reason}"


@pytest.mark.parametrize(
    "value",
    [
        b"abc",
        b"0" * 63,
        b"0" * 65,
        b"g" * 64,
        b" " * 64,
        base64.b64encode(b"\x01" * 31),  # 44 characters, 31 bytes
        base64.b64encode(b"\x01" * 33),  # 44 characters, 33 bytes
        b"!" * 44,
    ],
)
@pytest.mark.parametrize("with_body", [False, True])
async def test_a_malformed_expected_digest_is_400_at_creation(
    client: httpx.AsyncClient, services: Services, value: bytes, with_body: bool
) -> None:
    headers = {**TUS, "Upload-Length": "3", "Upload-Metadata": f"sha256 {b64(value)}"}
    if with_body:
        headers["Content-Type"] = OFFSET_CT
    response = await client.post("/files/", headers=headers, content=b"abc" if with_body else None)
    assert response.status_code == 400
    assert reason(response) == "metadata sha256 must be 64 hex digits or 44 base64 characters"
    assert await count_uploads(services) == 0
    assert await stored_files(services) == []


# -- the digest on download ---------------------------------------------------------------------


async def test_download_carries_the_digest(client: httpx.AsyncClient) -> None:
    data = random_bytes(100 * KiB, seed=6)
    upload_id = await create(client, len(data), body=data)
    encoded = b64(hashlib.sha256(data).digest())
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Repr-Digest"] == f"sha-256=:{encoded}:"
    assert response.headers["Digest"] == f"sha-256={encoded}"
    # The representation's digest, also on a range of it.
    ranged = await client.get(f"/files/{upload_id}", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.headers["Repr-Digest"] == f"sha-256=:{encoded}:"


@pytest.mark.parametrize("deferred", [False, True])
async def test_a_zero_length_upload_is_ready_with_the_digest_of_nothing(
    client: httpx.AsyncClient, deferred: bool
) -> None:
    if deferred:
        upload_id = await create(client, None)
        assert (await patch(client, upload_id, 0, b"", Upload_Length="0")).status_code == 204
    else:
        upload_id = await create(client, 0)
    shown = await status(client, upload_id)
    assert shown["state"] == "ready"
    assert shown["sha256"] == EMPTY_SHA256
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Repr-Digest"] == f"sha-256=:{b64(hashlib.sha256().digest())}:"


# -- expiry clean-up ----------------------------------------------------------------------------


async def test_clean_up_expires_unfinished_uploads_and_deletes_their_bytes(
    client: httpx.AsyncClient, services: Services
) -> None:
    stale = await create(client, 10, body=b"abc")
    fresh = await create(client, 10, body=b"xyz")
    done = await create(client, 3, body=b"abc")
    await set_expires_at(services, stale, past())

    assert await services.handler.lifecycle.expire() == 1

    shown = await status(client, stale)
    assert shown["state"] == "expired"
    assert await stored_bytes(services, stale) is None
    status_head = await head(client, stale)
    assert status_head.status_code == 410
    assert "Upload-Offset" not in status_head.headers
    patched = await patch(client, stale, 3, b"def")
    assert patched.status_code == 410
    assert reason(patched) == "upload has expired"
    assert await stored_bytes(services, stale) is None
    assert (await client.get(f"/files/{stale}")).status_code == 410
    deleted = await client.delete(f"/files/{stale}", headers=TUS)
    assert deleted.status_code == 410
    assert reason(deleted) == "upload has expired"

    assert (await status(client, fresh))["state"] == "receiving"
    assert await stored_bytes(services, fresh) == b"xyz"
    assert (await status(client, done))["state"] == "ready"
    assert await services.handler.lifecycle.expire() == 0


async def test_clean_up_forgets_ended_uploads_after_the_tombstone_period(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Expired and terminated uploads answer 410 for one more expiry period, then 404."""
    expired = await create(client, 10, body=b"abc")
    terminated = await create(client, 10, body=b"abc")
    live = await create(client, 10, body=b"abc")
    wrong = hashlib.sha256(b"something else").hexdigest()
    failed = await create(client, 3, body=b"abc", metadata=f"sha256 {b64(wrong.encode())}")
    assert (await status(client, failed))["state"] == "failed"
    assert await stored_bytes(services, failed) == b"abc"  # kept while the tombstone lasts
    await set_expires_at(services, expired, past())
    assert (await client.delete(f"/files/{terminated}", headers=TUS)).status_code == 204
    assert await services.handler.lifecycle.expire() == 1
    for upload_id in (expired, terminated, failed):
        assert (await head(client, upload_id)).status_code == 410

    long_ago = datetime.now(UTC) - timedelta(seconds=services.settings.limits.expire_after + 60)
    async with services.engine.begin() as connection:
        await connection.execute(
            update(UploadRow)
            .where(UploadRow.id.in_([expired, terminated, failed]))
            .values(state_changed_at=long_ago)
        )
    assert await services.handler.lifecycle.expire() == 0
    for upload_id in (expired, terminated, failed):
        assert (await head(client, upload_id)).status_code == 404
        assert (await client.get(f"/api/uploads/{upload_id}")).status_code == 404
        assert await stored_bytes(services, upload_id) is None
    assert (await status(client, live))["state"] == "receiving"


async def test_clean_up_sweeps_files_that_no_upload_names(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A crash between creating an upload's file and inserting its row leaves a file nobody
    names: clean-up deletes it once it is older than the grace period, and nothing else."""
    kept = await create(client, 10, body=b"abc")
    files = anyio.Path(services.settings.storage.files_dir)
    lost, young, foreign = "a" * 32, "b" * 32, "notes.txt"
    for name in (lost, young, foreign):
        await (files / name).write_bytes(b"lost")
    hour_ago = datetime.now(UTC).timestamp() - 3600
    for name in (lost, kept, foreign):
        await anyio.to_thread.run_sync(os.utime, files / name, (hour_ago, hour_ago))

    assert await services.handler.lifecycle.expire() == 0
    assert not await (files / lost).exists()
    assert await (files / young).exists()  # its row may be on its way: too young to judge
    assert await (files / foreign).exists()  # not an upload's name: never touched
    assert await stored_bytes(services, kept) == b"abc"
    assert (await status(client, kept))["offset"] == 3


async def test_clean_up_runs_in_the_background(
    data_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(make_settings(data_dir, database_url, cleanup_interval=0.01)) as served:
        client, services = served.client, served.services
        deleted = anyio.Event()
        delete = services.store.delete

        async def observed(key: StorageKey) -> None:
            await delete(key)
            deleted.set()

        monkeypatch.setattr(services.store, "delete", observed)
        upload_id = await create(client, 10, body=b"abc")
        assert (await status(client, upload_id))["state"] == "receiving"
        await set_expires_at(services, upload_id, past())
        with anyio.fail_after(GUARD):
            await deleted.wait()
        assert (await status(client, upload_id))["state"] == "expired"
        assert await stored_bytes(services, upload_id) is None


async def test_clean_up_never_touches_an_upload_being_written(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"ab")
    started, release = anyio.Event(), anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"cd"
        started.set()  # the handler asked for more: it holds the upload's lock
        await release.wait()
        yield b"ef"

    responses: list[httpx.Response] = []

    async def send() -> None:
        responses.append(await patch(client, upload_id, 2, body()))

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        with anyio.fail_after(GUARD):
            await started.wait()
        await set_expires_at(services, upload_id, past())
        assert await services.handler.lifecycle.expire() == 0
        assert (await record(services, upload_id)).state is UploadState.RECEIVING
        assert await stored_bytes(services, upload_id) is not None
        release.set()

    assert responses[0].status_code == 204
    assert responses[0].headers["Upload-Offset"] == "6"
    upload = await record(services, upload_id)
    assert upload.state is UploadState.RECEIVING
    assert upload.expires_at is not None
    assert upload.expires_at > datetime.now(UTC)  # the commit moved the expiry on
    assert await stored_bytes(services, upload_id) == b"abcdef"


async def test_cleanup_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("UPLOAD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    data_dir = tmp_path / "cli" / "data"
    monkeypatch.setenv("UPLOAD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("UPLOAD_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / 'uploads.db'}")
    # Alembic and the command run their own event loops: call them from a worker thread.
    assert await anyio.to_thread.run_sync(main, ["migrate"]) == 0
    capsys.readouterr()

    async with running(load_settings()) as served:
        stale = await create(served.client, 10, body=b"abc")
        fresh = await create(served.client, 10, body=b"xyz")
        await set_expires_at(served.services, stale, past())

    assert await anyio.to_thread.run_sync(main, ["cleanup"]) == 0
    assert capsys.readouterr().out == "expired 1 unfinished uploads\n"
    assert not (data_dir / "files" / stale).exists()
    assert (data_dir / "files" / fresh).read_bytes() == b"xyz"
    assert await anyio.to_thread.run_sync(main, ["cleanup"]) == 0
    assert capsys.readouterr().out == "expired 0 unfinished uploads\n"

    async with running(load_settings()) as served:
        assert (await status(served.client, stale))["state"] == "expired"
        assert (await head(served.client, stale)).status_code == 410
        assert (await status(served.client, fresh))["state"] == "receiving"


# -- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("matches", [True, False])
async def test_start_up_resumes_an_upload_left_verifying(settings: Settings, matches: bool) -> None:
    data = random_bytes(200 * KiB, seed=7)
    stated = sha256_hex(data) if matches else sha256_hex(data[1:])
    async with running(settings) as first:
        upload_id = await create(
            first.client, len(data), body=data, metadata=f"sha256 {b64(stated.encode())}"
        )
        await settled(first.app, first.client, upload_id)
        # As if the process stopped after the last byte, before the digest was stored.
        async with first.services.engine.begin() as connection:
            await connection.execute(
                update(UploadRow)
                .where(UploadRow.id == upload_id)
                .values(state="verifying", sha256=None, failure=None)
            )

    async with running(settings) as second:
        shown = await settled(second.app, second.client, upload_id)
        if matches:
            assert shown["state"] == "ready"
            assert shown["sha256"] == sha256_hex(data)
            assert (await second.client.get(f"/files/{upload_id}")).content == data
        else:
            assert shown["state"] == "failed"
            assert shown["failure"] == (
                f"sha256 mismatch: expected {stated}, got {sha256_hex(data)}"
            )
