"""The service on ``UPLOAD_STORAGE=s3``, over HTTP, against the real moto server: uploads in
chunks and checksums end up as one object in the bucket, downloads (Range, validators,
conditionals) stream from it, termination and clean-up leave nothing behind, and an unreachable
bucket is a 503, never a wrong offset. (The store's own behaviour is in the contract suite,
tests/test_contract_store.py.)"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx
import pytest

from tests import s3 as moto
from tests.conftest import TUS, Databases, make_settings
from tests.test_handler import CONFIG, Clock, Killed, chunks, empty
from tests.test_handler import create as handler_create
from tests.tus_http_helpers import Served, count_uploads, create, head, patch, reason, serve
from upload_service.locking.memory import MemoryLocker
from upload_service.settings import Settings
from upload_service.storage.s3.store import S3Store
from upload_service.tus.handler import TusHandler
from upload_service.tus.request import TusHeaders, TusRequest
from upload_service.uploads import UploadState

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
GiB = 1024 * MiB
PART = 5 * MiB
PREFIX = "videos/"


def _admin(endpoint: str) -> S3Client:
    return moto.admin(endpoint)


def _keys(endpoint: str, bucket: str) -> list[str]:
    listed = _admin(endpoint).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def _multipart_uploads(endpoint: str, bucket: str) -> list[str]:
    listed = _admin(endpoint).list_multipart_uploads(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Uploads", []))


def _object_bytes(endpoint: str, bucket: str, key: str) -> bytes:
    return _admin(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the probe is closed


def s3_settings(data_dir: Path, database_url: str, endpoint: str, bucket: str) -> Settings:
    return make_settings(
        data_dir,
        database_url,
        storage="s3",
        s3_bucket=bucket,
        s3_endpoint_url=endpoint,
        s3_prefix=PREFIX,
        s3_part_size=PART,
        max_size=1024 * MiB,
    )


@pytest.fixture
async def served(
    aws_credentials: None, data_dir: Path, database_url: str, moto_endpoint: str, bucket: str
) -> AsyncIterator[Served]:
    async with serve(s3_settings(data_dir, database_url, moto_endpoint, bucket)) as result:
        yield result


async def _ready(client: httpx.AsyncClient, upload_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, object] = (await client.get(f"/api/uploads/{upload_id}")).json()
        if body["state"] in ("ready", "failed") or time.monotonic() > deadline:
            return body
        await anyio.sleep(0.05)


def _data(size: int, seed: int = 11) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_an_upload_in_chunks_becomes_one_object_in_the_bucket(
    served: Served, moto_endpoint: str, bucket: str, data_dir: Path
) -> None:
    client = served.client
    data = _data(2 * PART + 3 * MiB + 17)
    upload_id = await create(client, len(data))
    cuts = [0, 3 * MiB, PART + 1, 2 * PART + MiB, len(data)]  # inside, across and on parts
    for start, end in itertools.pairwise(cuts):
        response = await patch(client, upload_id, start, data[start:end])
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(end)
        assert (await head(client, upload_id)).headers["Upload-Offset"] == str(end)
    body = await _ready(client, upload_id)
    assert body["state"] == "ready"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    stored = await anyio.to_thread.run_sync(
        _object_bytes, moto_endpoint, bucket, PREFIX + upload_id
    )
    assert stored == data
    assert await anyio.to_thread.run_sync(_keys, moto_endpoint, bucket) == [PREFIX + upload_id]
    assert await anyio.to_thread.run_sync(_multipart_uploads, moto_endpoint, bucket) == []
    assert not (data_dir / "files").exists() or not any((data_dir / "files").iterdir())
    assert list((data_dir / "spool").iterdir()) == []  # spool files are unlinked temporaries


async def test_a_download_with_range_streams_from_the_bucket(served: Served) -> None:
    client = served.client
    data = _data(PART + 1234, seed=5)
    upload_id = await create(client, len(data), body=data)
    assert (await _ready(client, upload_id))["state"] == "ready"
    whole = await client.get(f"/files/{upload_id}")
    assert whole.status_code == 200
    assert whole.content == data
    ranged = await client.get(f"/files/{upload_id}", headers={"Range": f"bytes={PART - 10}-"})
    assert ranged.status_code == 206
    assert ranged.content == data[PART - 10 :]
    assert ranged.headers["Content-Range"] == f"bytes {PART - 10}-{len(data) - 1}/{len(data)}"


async def test_a_download_from_the_bucket_is_safe_and_cache_friendly(served: Served) -> None:
    client = served.client
    data = _data(PART + 99, seed=7)
    metadata = "filetype " + base64.b64encode(b"video/mp4").decode()
    metadata += ",filename " + base64.b64encode("clip été.mp4".encode()).decode()
    upload_id = await create(client, len(data), metadata=metadata, body=data)
    assert (await _ready(client, upload_id))["state"] == "ready"
    whole = await client.get(f"/files/{upload_id}")
    assert whole.status_code == 200
    assert whole.content == data
    etag = f'"sha256-{hashlib.sha256(data).hexdigest()}"'
    assert whole.headers["ETag"] == etag
    assert whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Content-Disposition"] == (
        "inline; filename=\"clip _t_.mp4\"; filename*=UTF-8''clip%20%C3%A9t%C3%A9.mp4"
    )
    assert whole.headers["X-Content-Type-Options"] == "nosniff"
    assert whole.headers["Content-Security-Policy"] == "sandbox"
    assert whole.headers["Accept-Ranges"] == "bytes"
    since = whole.headers["Last-Modified"]
    for conditions in ({"If-None-Match": etag}, {"If-Modified-Since": since}):
        cached = await client.get(f"/files/{upload_id}", headers=conditions)
        assert cached.status_code == 304
        assert cached.content == b""
        assert cached.headers["ETag"] == etag
    resumed = await client.get(
        f"/files/{upload_id}", headers={"Range": f"bytes={PART}-", "If-Range": etag}
    )
    assert resumed.status_code == 206
    assert resumed.content == data[PART:]
    changed = await client.get(
        f"/files/{upload_id}", headers={"Range": f"bytes={PART}-", "If-Range": '"other"'}
    )
    assert changed.status_code == 200
    assert changed.content == data


async def test_a_wrong_checksum_changes_nothing_and_the_right_one_is_kept(
    served: Served, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    data = _data(PART + MiB, seed=8)
    upload_id = await create(client, len(data))
    first = await patch(client, upload_id, 0, data[:MiB])
    assert first.status_code == 204
    chunk = data[MiB:]
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"not it").digest()).decode()
    refused = await patch(client, upload_id, MiB, chunk, Upload_Checksum=wrong)
    assert refused.status_code == 460
    assert (await head(client, upload_id)).headers["Upload-Offset"] == str(MiB)
    right = "sha1 " + base64.b64encode(hashlib.sha1(chunk).digest()).decode()
    accepted = await patch(client, upload_id, MiB, chunk, Upload_Checksum=right)
    assert accepted.status_code == 204, accepted.text
    assert (await _ready(client, upload_id))["sha256"] == hashlib.sha256(data).hexdigest()
    stored = await anyio.to_thread.run_sync(
        _object_bytes, moto_endpoint, bucket, PREFIX + upload_id
    )
    assert stored == data


async def test_termination_leaves_nothing_in_the_bucket(
    served: Served, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    unfinished = await create(client, 3 * PART)
    assert (await patch(client, unfinished, 0, _data(PART + 99))).status_code == 204
    finished = await create(client, 10, body=b"0123456789")
    assert (await _ready(client, finished))["state"] == "ready"
    for upload_id in (unfinished, finished):
        response = await client.delete(f"/files/{upload_id}", headers=TUS)
        assert response.status_code == 204
    assert await anyio.to_thread.run_sync(_keys, moto_endpoint, bucket) == []
    assert await anyio.to_thread.run_sync(_multipart_uploads, moto_endpoint, bucket) == []


async def test_concatenation_builds_the_final_object_in_the_bucket(
    served: Served, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    pieces = [_data(PART + 7, seed=1), _data(3 * MiB, seed=2), _data(PART, seed=3)]
    parts = []
    for piece in pieces:
        headers = {**TUS, "Upload-Length": str(len(piece)), "Upload-Concat": "partial"}
        response = await client.post("/files/", headers=headers)
        assert response.status_code == 201
        upload_id = response.headers["Location"].rsplit("/", 1)[-1]
        assert (await patch(client, upload_id, 0, piece)).status_code == 204
        parts.append(upload_id)
    final_header = "final;" + " ".join(f"/files/{upload_id}" for upload_id in parts)
    response = await client.post("/files/", headers={**TUS, "Upload-Concat": final_header})
    assert response.status_code == 201, response.text
    final = response.headers["Location"].rsplit("/", 1)[-1]
    body = await _ready(client, final)
    expected = b"".join(pieces)
    assert body["state"] == "ready", body
    assert body["sha256"] == hashlib.sha256(expected).hexdigest()
    stored = await anyio.to_thread.run_sync(_object_bytes, moto_endpoint, bucket, PREFIX + final)
    assert stored == expected
    assert (await client.get(f"/files/{final}")).content == expected


async def test_readyz_checks_the_bucket(
    aws_credentials: None, data_dir: Path, database_url: str, moto_endpoint: str
) -> None:
    settings = s3_settings(data_dir, database_url, moto_endpoint, "no-such-bucket-here")
    async with serve(settings) as served:
        response = await served.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["detail"]


async def test_an_unreachable_object_store_is_a_503_and_moves_no_offset(
    aws_credentials: None, data_dir: Path, database_url: str
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    settings = s3_settings(data_dir, database_url, endpoint, "any-bucket")
    async with serve(settings) as served:
        client = served.client
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        response = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "object storage" in reason(response)
        assert await count_uploads(served.services) == 0


async def test_clean_up_aborts_multipart_uploads_no_row_names(
    databases: Databases, moto_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """A crash between creating an upload's multipart upload and inserting its row leaves one
    behind: clean-up aborts it (and its tails) once it is older than the grace period, and
    leaves those of real uploads alone."""
    client = moto.client(moto_endpoint)
    store = S3Store(client, bucket, PREFIX, part_size=PART, spool_dir=tmp_path, max_size=GiB)
    clock = Clock(datetime.now(UTC))
    handler = TusHandler(
        store=store,
        repository=databases.repository(),
        locker=MemoryLocker(),
        config=CONFIG,
        clock=clock,
    )
    try:
        orphan = "0f" * 16
        await store.create(orphan)  # storage without a row
        kept = await handler_create(handler, 100)
        listed = await anyio.to_thread.run_sync(_multipart_uploads, moto_endpoint, bucket)
        assert listed == sorted([PREFIX + orphan, PREFIX + kept])
        await handler.lifecycle.expire()  # too young: kept
        assert len(await anyio.to_thread.run_sync(_multipart_uploads, moto_endpoint, bucket)) == 2
        clock.advance(CONFIG.orphan_grace + 60)  # the real upload has not expired
        await handler.lifecycle.expire()
        assert await anyio.to_thread.run_sync(_multipart_uploads, moto_endpoint, bucket) == [
            PREFIX + kept
        ]
        keys = await anyio.to_thread.run_sync(_keys, moto_endpoint, bucket)
        assert all(not key.startswith(PREFIX + orphan) for key in keys)
    finally:
        await store.aclose()


async def test_start_up_after_a_kill_between_a_finals_object_and_its_commit(
    databases: Databases,
    moto_endpoint: str,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the kill storm: the final's object was completed in the bucket, the kill came
    before its row said so. Start-up then cut the final back as if it were a receiving upload,
    asked S3 for a multipart upload that no longer exists, and refused to start. A final's
    bytes are its assembly's: start-up leaves them to the assembly, which it resumes."""
    client = moto.client(moto_endpoint)
    store = S3Store(client, bucket, PREFIX, part_size=PART, spool_dir=tmp_path, max_size=GiB)
    repository = databases.repository()
    handler = TusHandler(store=store, repository=repository, locker=MemoryLocker(), config=CONFIG)
    pieces = [_data(PART + 10, seed=1), _data(300, seed=2)]
    try:
        part_ids = []
        for piece in pieces:
            headers = TusHeaders(
                tus_resumable="1.0.0", upload_length=str(len(piece)), upload_concat="partial"
            )
            created = await handler.create(TusRequest(headers=headers), empty())
            assert created.upload_id is not None
            headers = TusHeaders(
                tus_resumable="1.0.0",
                content_type="application/offset+octet-stream",
                upload_offset="0",
            )
            await handler.patch(TusRequest(created.upload_id, headers), chunks(piece))
            part_ids.append(created.upload_id)

        async def killed(*_args: object, **_kwargs: object) -> None:
            raise Killed

        assembled = repository.assembled
        monkeypatch.setattr(repository, "assembled", killed)
        concat = "final;" + " ".join(f"/files/{part}" for part in part_ids)
        final = TusRequest(headers=TusHeaders(tus_resumable="1.0.0", upload_concat=concat))
        with pytest.raises(Killed):
            await handler.create(final, empty())
        monkeypatch.setattr(repository, "assembled", assembled)
        (final_row,) = [u for u in await repository.list_by_state(UploadState.RECEIVING)]
        assert final_row.is_final

        await handler.reconcile_all()  # start-up: it raised NotFound here

        final_row = await repository.get(final_row.id)  # type: ignore[assignment]
        assert final_row is not None
        assert final_row.state in (UploadState.VERIFYING, UploadState.READY)
        assert final_row.length == sum(len(piece) for piece in pieces)
        stored = b"".join(
            [chunk async for chunk in store.read(final_row.storage, 0, final_row.length)]
        )
        assert stored == b"".join(pieces)
    finally:
        await store.aclose()
