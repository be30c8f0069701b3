"""HTTP tests of the checksum extension: discovery, per-request digests on PATCH and on creation
with upload, 460 leaving the stored bytes as they were, and all-or-nothing checksummed requests."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.conftest import TUS, make_settings
from tests.integrity_helpers import (
    ALGORITHMS,
    KiB,
    MiB,
    checksum,
    patch_then_disconnect,
    random_bytes,
    raw_digest,
    running,
    settled,
)
from tests.tus_http_helpers import (
    BASE_URL,
    OFFSET_CT,
    count_uploads,
    create,
    head,
    patch,
    reason,
    record,
    snapshot,
    stored_bytes,
    stored_files,
)
from upload_service.services import Services
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio  # see test_tus_creation.py


def mismatch(algorithm: str) -> str:
    return (
        f"{algorithm} of the request body does not match Upload-Checksum; the chunk was discarded"
    )


# -- discovery ----------------------------------------------------------------------------------


async def test_options_advertises_checksum_and_its_algorithms(client: httpx.AsyncClient) -> None:
    response = await client.options("/files/")
    assert response.status_code == 204
    extensions = {part.strip() for part in response.headers["Tus-Extension"].split(",")}
    assert "checksum" in extensions
    # uvicorn does not hand HTTP trailers to the app, so the trailer variant is not offered.
    assert "checksum-trailer" not in extensions
    algorithms = [part.strip() for part in response.headers["Tus-Checksum-Algorithm"].split(",")]
    assert sorted(algorithms) == sorted(ALGORITHMS)


# -- PATCH --------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_patch_with_a_correct_checksum_is_committed(
    client: httpx.AsyncClient, services: Services, algorithm: str
) -> None:
    data = random_bytes(300 * KiB, seed=1)
    upload_id = await create(client, len(data))
    first = await patch(
        client, upload_id, 0, data[:100], Upload_Checksum=checksum(algorithm, data[:100])
    )
    assert first.status_code == 204, first.text
    assert first.headers["Upload-Offset"] == "100"
    rest = data[100:]
    second = await patch(client, upload_id, 100, rest, Upload_Checksum=checksum(algorithm, rest))
    assert second.status_code == 204, second.text
    assert second.headers["Upload-Offset"] == str(len(data))
    assert await stored_bytes(services, upload_id) == data
    assert (await client.get(f"/files/{upload_id}")).content == data


async def test_algorithm_names_are_case_insensitive(client: httpx.AsyncClient) -> None:
    upload_id = await create(client, 3)
    value = checksum("sha1", b"abc").replace("sha1", "SHA1")
    response = await patch(client, upload_id, 0, b"abc", Upload_Checksum=value)
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"


async def test_an_empty_patch_with_the_checksum_of_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 3, b"", Upload_Checksum=checksum("sha1", b""))
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"
    wrong = await patch(client, upload_id, 3, b"", Upload_Checksum=checksum("sha1", b"x"))
    assert wrong.status_code == 460
    assert reason(wrong) == mismatch("sha1")
    assert await snapshot(services, upload_id) == before


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("corruption", ["wrong digest", "corrupted body", "short body"])
async def test_mismatch_is_460_and_leaves_the_stored_bytes_byte_for_byte(
    client: httpx.AsyncClient, services: Services, algorithm: str, corruption: str
) -> None:
    data = random_bytes(4 * MiB, seed=2)
    start = 1 * MiB + 123
    upload_id = await create(client, len(data))
    assert (await patch(client, upload_id, 0, data[:start])).status_code == 204
    before = await snapshot(services, upload_id)
    assert before.data == data[:start]

    # A chunk larger than the write buffer, so part of it reaches the disk before the verdict.
    chunk = data[start : start + 2 * MiB + 7]
    body, stated = chunk, chunk
    if corruption == "wrong digest":
        stated = chunk[:-1] + bytes([chunk[-1] ^ 1])
    elif corruption == "corrupted body":
        body = chunk[:1000] + bytes([chunk[1000] ^ 0x80]) + chunk[1001:]
    else:
        body = chunk[: len(chunk) // 2]
    response = await patch(
        client, upload_id, start, body, Upload_Checksum=checksum(algorithm, stated)
    )

    assert response.status_code == 460
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Offset" not in response.headers
    assert reason(response) == mismatch(algorithm)
    after = await snapshot(services, upload_id)
    assert after.data == before.data  # the whole file, byte for byte
    assert after == before  # offset, received, state, timestamps: all unchanged
    status = await head(client, upload_id)
    assert status.headers["Upload-Offset"] == str(start)

    # The client resends the chunk correctly and the upload goes on.
    retried = await patch(
        client, upload_id, start, chunk, Upload_Checksum=checksum(algorithm, chunk)
    )
    assert retried.status_code == 204
    assert retried.headers["Upload-Offset"] == str(start + len(chunk))
    assert await stored_bytes(services, upload_id) == data[: start + len(chunk)]


async def test_a_checksum_is_checked_after_the_offset(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 2, b"def", Upload_Checksum=checksum("sha1", b"x"))
    assert response.status_code == 409
    assert await snapshot(services, upload_id) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sha3 AAAA", "checksum algorithm 'sha3' is not supported (sha1,sha256,sha512,md5,crc32)"),
        (
            "crc32c AAAAAA==",
            "checksum algorithm 'crc32c' is not supported (sha1,sha256,sha512,md5,crc32)",
        ),
        ("sha1", "Upload-Checksum must be '<algorithm> <base64 digest>'"),
        (
            "sha1:" + base64.b64encode(b"x" * 20).decode(),
            "Upload-Checksum must be '<algorithm> <base64 digest>'",
        ),
        (
            "sha1  " + base64.b64encode(b"x" * 20).decode(),
            "Upload-Checksum must be '<algorithm> <base64 digest>'",
        ),
        ("sha1 a b", "Upload-Checksum must be '<algorithm> <base64 digest>'"),
        ("", "Upload-Checksum must be '<algorithm> <base64 digest>'"),
        ("sha1 !!!!", "Upload-Checksum digest is not valid base64"),
        ("sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0", "Upload-Checksum digest is not valid base64"),
        ("sha1 " + base64.b64encode(b"x" * 19).decode(), "a sha1 digest has 20 bytes, got 19"),
        (
            "sha256 " + base64.b64encode(raw_digest("sha1", b"abc")).decode(),
            "a sha256 digest has 32 bytes, got 20",
        ),
        ("crc32 " + base64.b64encode(b"\0" * 8).decode(), "a crc32 digest has 4 bytes, got 8"),
    ],
)
async def test_unknown_algorithm_or_malformed_header_is_400_and_writes_nothing(
    client: httpx.AsyncClient, services: Services, value: str, message: str
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 3, b"def", Upload_Checksum=value)
    assert response.status_code == 400
    assert reason(response) == message
    assert await snapshot(services, upload_id) == before


# -- creation with upload -----------------------------------------------------------------------


async def post_with_body(
    client: httpx.AsyncClient, length: int, body: bytes, upload_checksum: str
) -> httpx.Response:
    headers = {
        **TUS,
        "Upload-Length": str(length),
        "Content-Type": OFFSET_CT,
        "Upload-Checksum": upload_checksum,
    }
    return await client.post("/files/", headers=headers, content=body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_creation_with_upload_and_a_correct_checksum(
    client: httpx.AsyncClient, services: Services, algorithm: str
) -> None:
    body = random_bytes(64 * KiB, seed=3)
    response = await post_with_body(client, 100 * KiB, body, checksum(algorithm, body))
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == str(len(body))
    upload_id = response.headers["Location"].removeprefix(f"{BASE_URL}/files/")
    assert await stored_bytes(services, upload_id) == body
    assert (await record(services, upload_id)).offset == len(body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_creation_with_upload_and_a_wrong_checksum_is_460_and_leaves_nothing(
    client: httpx.AsyncClient, services: Services, algorithm: str
) -> None:
    body = random_bytes(3 * MiB, seed=4)
    response = await post_with_body(client, 4 * MiB, body, checksum(algorithm, body[1:]))
    assert response.status_code == 460
    assert reason(response) == mismatch(algorithm)
    # An error response carries no Location: the client could never resume or delete it.
    assert "Location" not in response.headers
    assert await stored_files(services) == []
    async with services.engine.connect() as connection:
        states = (await connection.execute(text("SELECT state FROM uploads"))).scalars().all()
    assert states == ["terminated"]


async def test_creation_with_upload_and_a_malformed_checksum_is_400(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await post_with_body(client, 10, b"abc", "sha1 nope!")
    assert response.status_code == 400
    assert reason(response) == "Upload-Checksum digest is not valid base64"
    assert await count_uploads(services) == 0
    assert await stored_files(services) == []


# -- all or nothing -----------------------------------------------------------------------------


@pytest.mark.parametrize("checksummed", [True, False])
async def test_a_broken_off_checksummed_patch_commits_nothing(
    app: FastAPI, client: httpx.AsyncClient, services: Services, checksummed: bool
) -> None:
    data = random_bytes(4 * MiB, seed=5)
    start = 100 * KiB
    upload_id = await create(client, len(data), body=data[:start])
    chunk = data[start : start + 2 * MiB]
    headers = {"Upload-Checksum": checksum("sha256", chunk)} if checksummed else {}
    pieces = [chunk[i : i + 512 * KiB] for i in range(0, 3 * 512 * KiB, 512 * KiB)]

    sent = await patch_then_disconnect(app, upload_id, start, pieces, headers)

    assert sent[0]["type"] == "http.response.start"
    kept = start if checksummed else start + 3 * 512 * KiB
    assert await stored_bytes(services, upload_id) == data[:kept]
    upload = await record(services, upload_id)
    assert upload.offset == upload.received == kept
    assert upload.state is UploadState.RECEIVING
    assert (await head(client, upload_id)).headers["Upload-Offset"] == str(kept)

    rest = data[kept:]
    finished = await patch(client, upload_id, kept, rest, Upload_Checksum=checksum("sha1", rest))
    assert finished.status_code == 204
    assert (await settled(app, client, upload_id))["state"] == "ready"
    assert (await client.get(f"/files/{upload_id}")).content == data


@pytest.mark.parametrize(
    ("upload_checksum", "status"), [("right", 204), ("wrong", 460), (None, 204)]
)
async def test_a_checksummed_patch_longer_than_a_checkpoint_commits_only_at_the_end(
    data_dir: Path, database_url: str, upload_checksum: str | None, status: int
) -> None:
    # checkpoint_bytes at its minimum: an unchecksummed PATCH commits after each MiB.
    settings = make_settings(data_dir, database_url, checkpoint_bytes=MiB, checkpoint_seconds=1e9)
    data = random_bytes(3 * MiB + 5, seed=6)
    seen: list[int] = []
    async with running(settings) as served:
        client, services = served.client, served.services
        upload_id = await create(client, len(data) + 10)

        async def body() -> AsyncIterator[bytes]:
            for at in range(0, len(data), 256 * KiB):
                yield data[at : at + 256 * KiB]
                # The handler pulls the next piece only after it handled (and checkpointed) this one.
                seen.append((await record(services, upload_id)).offset)

        headers = {}
        if upload_checksum is not None:
            stated = data if upload_checksum == "right" else data + b"x"
            headers["Upload_Checksum"] = checksum("md5", stated)
        response = await patch(client, upload_id, 0, body(), **headers)

        assert response.status_code == status, response.text
        upload = await record(services, upload_id)
        if upload_checksum is None:
            assert max(seen) >= 2 * MiB  # checkpoints committed while the body streamed
            assert upload.offset == len(data)
        else:
            assert set(seen) == {0}  # nothing committed mid-request
            assert upload.offset == (len(data) if status == 204 else 0)
            assert await stored_bytes(services, upload_id) == data[: upload.offset]
