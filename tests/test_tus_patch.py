"""HTTP tests: HEAD, PATCH (including deferred length and method override), DELETE, expiration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import TUS, make_settings
from tests.integrity_helpers import patch_then_disconnect
from tests.tus_http_helpers import (
    OFFSET_CT,
    create,
    head,
    patch,
    reason,
    record,
    serve,
    set_expires_at,
    snapshot,
    stored_bytes,
)
from upload_service.services import Services
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

UNKNOWN = "0123456789abcdef0123456789abcdef"


# -- HEAD ---------------------------------------------------------------------------------------


async def test_head_reports_offset_length_and_no_store(client: httpx.AsyncClient) -> None:
    upload_id = await create(client, 10, body=b"abcd")
    response = await head(client, upload_id)
    assert response.status_code == 200
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Upload-Offset"] == "4"
    assert response.headers["Upload-Length"] == "10"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Upload-Defer-Length" not in response.headers
    assert "Upload-Expires" in response.headers
    assert response.content == b""


async def test_head_of_a_deferred_upload(client: httpx.AsyncClient) -> None:
    upload_id = await create(client, None)
    response = await head(client, upload_id)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers


async def test_head_of_a_complete_upload(client: httpx.AsyncClient) -> None:
    upload_id = await create(client, 3, body=b"abc")
    response = await head(client, upload_id)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "3"
    assert response.headers["Upload-Length"] == "3"
    assert "Upload-Expires" not in response.headers


@pytest.mark.parametrize(
    "upload_id",
    [UNKNOWN, UNKNOWN.upper(), "..%2Fetc", "..%2F..%2Fuploads.db", "abc", UNKNOWN + "0"],
)
async def test_head_of_unknown_or_malformed_id_is_404(
    client: httpx.AsyncClient, upload_id: str
) -> None:
    response = await client.head(f"/files/{upload_id}", headers=TUS)
    assert response.status_code == 404
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Offset" not in response.headers


async def test_head_after_delete_is_410(client: httpx.AsyncClient) -> None:
    upload_id = await create(client, 10)
    assert (await client.delete(f"/files/{upload_id}", headers=TUS)).status_code == 204
    response = await head(client, upload_id)
    assert response.status_code == 410
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Offset" not in response.headers


# -- expiration ---------------------------------------------------------------------------------


async def test_expired_upload_answers_410(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 10, body=b"abc")
    await set_expires_at(services, upload_id, datetime.now(UTC) - timedelta(seconds=1))
    before = await snapshot(services, upload_id)

    status = await head(client, upload_id)
    assert status.status_code == 410
    assert "Upload-Offset" not in status.headers

    patched = await patch(client, upload_id, 3, b"def")
    assert patched.status_code == 410
    assert patched.headers["Tus-Resumable"] == "1.0.0"
    assert reason(patched) == "upload has expired"
    assert await snapshot(services, upload_id) == before

    downloaded = await client.get(f"/files/{upload_id}")
    assert downloaded.status_code == 410
    assert reason(downloaded) == "upload has expired"

    # Termination still works on an expired upload (the client can clean up).
    deleted = await client.delete(f"/files/{upload_id}", headers=TUS)
    assert deleted.status_code == 204


async def test_expiry_moves_forward_with_each_patch(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10)
    soon = datetime.now(UTC) + timedelta(seconds=30)
    await set_expires_at(services, upload_id, soon)
    response = await patch(client, upload_id, 0, b"abc")
    assert response.status_code == 204
    upload = await record(services, upload_id)
    assert upload.expires_at is not None
    assert upload.expires_at > soon + timedelta(seconds=60)
    assert parsedate_to_datetime(response.headers["Upload-Expires"]) == (
        upload.expires_at.replace(microsecond=0)
    )


# -- PATCH --------------------------------------------------------------------------------------


async def test_patch_appends_and_reports_the_new_offset(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10)
    first = await patch(client, upload_id, 0, b"hello")
    assert first.status_code == 204
    assert first.content == b""
    assert first.headers["Tus-Resumable"] == "1.0.0"
    assert first.headers["Upload-Offset"] == "5"
    assert "Upload-Expires" in first.headers
    assert await stored_bytes(services, upload_id) == b"hello"
    assert (await record(services, upload_id)).offset == 5

    second = await patch(client, upload_id, 5, b"world")
    assert second.status_code == 204
    assert second.headers["Upload-Offset"] == "10"
    assert "Upload-Expires" not in second.headers
    upload = await record(services, upload_id)
    assert upload.state is UploadState.READY
    assert upload.offset == upload.received == 10
    assert (await client.get(f"/files/{upload_id}")).content == b"helloworld"


async def test_patch_accepts_content_type_parameters_and_case(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10)
    response = await patch(
        client, upload_id, 0, b"ab", Content_Type="Application/Offset+Octet-Stream; x=y"
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "2"


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        (None, "missing"),
        ("application/octet-stream", "'application/octet-stream'"),
        ("text/plain", "'text/plain'"),
        ("application/offset+octet-streamx", "'application/offset+octet-streamx'"),
    ],
)
async def test_patch_with_wrong_content_type_is_415(
    client: httpx.AsyncClient, services: Services, content_type: str | None, shown: str
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    headers = {**TUS, "Upload-Offset": "3"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.patch(f"/files/{upload_id}", headers=headers, content=b"def")
    assert response.status_code == 415
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert reason(response) == (
        f"Content-Type must be application/offset+octet-stream, got {shown}"
    )
    assert await snapshot(services, upload_id) == before


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (None, "Upload-Offset is required"),
        ("-1", "Upload-Offset must be a non-negative integer, got '-1'"),
        ("abc", "Upload-Offset must be a non-negative integer, got 'abc'"),
        ("3.0", "Upload-Offset must be a non-negative integer, got '3.0'"),
        ("", "Upload-Offset must be a non-negative integer, got ''"),
        (
            "99999999999999999999",
            "Upload-Offset must be a non-negative integer, got '99999999999999999999'",
        ),
    ],
)
async def test_patch_with_missing_or_bad_offset_is_400(
    client: httpx.AsyncClient, services: Services, offset: str | None, message: str
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    headers = {**TUS, "Content-Type": OFFSET_CT}
    if offset is not None:
        headers["Upload-Offset"] = offset
    response = await client.patch(f"/files/{upload_id}", headers=headers, content=b"def")
    assert response.status_code == 400
    assert reason(response) == message
    assert await snapshot(services, upload_id) == before


@pytest.mark.parametrize("offset", [0, 2, 4, 10])
async def test_patch_with_mismatching_offset_is_409_and_changes_nothing(
    client: httpx.AsyncClient, services: Services, offset: int
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, offset, b"XYZ")
    assert response.status_code == 409
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert reason(response) == f"Upload-Offset {offset} does not match the upload's offset 3"
    assert await snapshot(services, upload_id) == before
    assert before.data == b"abc"


@pytest.mark.parametrize(("version", "shown"), [(None, "missing"), ("0.2.2", "'0.2.2'")])
async def test_patch_without_supported_version_is_412_and_changes_nothing(
    client: httpx.AsyncClient, services: Services, version: str | None, shown: str
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    headers = {"Upload-Offset": "3", "Content-Type": OFFSET_CT}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = await client.patch(f"/files/{upload_id}", headers=headers, content=b"def")
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert reason(response) == f"Tus-Resumable is {shown}; this server supports 1.0.0"
    assert await snapshot(services, upload_id) == before


async def test_patch_with_body_beyond_remaining_length_is_413_and_changes_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 3, b"x" * 8)
    assert response.status_code == 413
    assert reason(response) == "Content-Length 8 exceeds the 7 bytes the upload has left"
    assert await snapshot(services, upload_id) == before


async def test_chunked_patch_past_the_length_keeps_only_the_length(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"abc")

    async def body() -> AsyncIterator[bytes]:
        yield b"defg"
        yield b"hijklmn"  # the upload has room for "hij" only
        yield b"opq"

    response = await patch(client, upload_id, 3, body())
    assert response.status_code == 413
    assert reason(response) == "request body exceeds the 7 bytes left"
    assert await stored_bytes(services, upload_id) == b"abcdefghij"
    upload = await record(services, upload_id)
    assert upload.offset == 10
    assert upload.state is UploadState.READY


async def test_chunked_patch_within_the_length(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10)

    async def body() -> AsyncIterator[bytes]:
        for piece in (b"ab", b"cde", b"", b"f"):
            yield piece

    response = await patch(client, upload_id, 0, body())
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "6"
    assert await stored_bytes(services, upload_id) == b"abcdef"


async def test_empty_patch_changes_nothing(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 3, b"")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"
    after = await snapshot(services, upload_id)
    assert after.data == before.data
    assert after.record is not None
    assert before.record is not None
    assert after.record.offset == before.record.offset


async def test_patch_on_a_complete_upload(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 3, body=b"abc")
    before = await snapshot(services, upload_id)

    empty = await patch(client, upload_id, 3, b"")
    assert empty.status_code == 204
    assert empty.headers["Upload-Offset"] == "3"
    assert await snapshot(services, upload_id) == before

    with_body = await patch(client, upload_id, 3, b"d")
    assert with_body.status_code == 413
    assert reason(with_body) == "Content-Length 1 exceeds the 0 bytes the upload has left"
    assert await snapshot(services, upload_id) == before

    async def chunked() -> AsyncIterator[bytes]:
        yield b"d"

    chunked_body = await patch(client, upload_id, 3, chunked())
    assert chunked_body.status_code == 413
    assert reason(chunked_body) == "the upload is already complete"
    assert await snapshot(services, upload_id) == before


async def test_patch_to_unknown_upload_is_404(client: httpx.AsyncClient) -> None:
    response = await patch(client, UNKNOWN, 0, b"abc")
    assert response.status_code == 404
    assert reason(response) == "no such upload"
    assert "Upload-Offset" not in response.headers


@pytest.mark.parametrize(
    ("upload_id", "routed"),
    [("..%2Fetc", False), ("%2E%2E", True), (UNKNOWN.upper(), True), ("x", True)],
)
async def test_patch_to_malformed_id_is_404_and_writes_nothing(
    client: httpx.AsyncClient, services: Services, upload_id: str, routed: bool
) -> None:
    response = await patch(client, upload_id, 0, b"abc")
    assert response.status_code == 404
    assert response.headers["Tus-Resumable"] == "1.0.0"
    if routed:  # an id holding "/" never reaches the handler: the router answers 404 itself
        assert reason(response) == "no such upload"
    assert [path async for path in anyio.Path(services.settings.storage.files_dir).iterdir()] == []
    assert not await anyio.Path(services.settings.storage.data_dir / "etc").exists()


async def test_patch_after_delete_is_410(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 10, body=b"abc")
    assert (await client.delete(f"/files/{upload_id}", headers=TUS)).status_code == 204
    response = await patch(client, upload_id, 3, b"def")
    assert response.status_code == 410
    assert reason(response) == "upload was terminated"
    assert await stored_bytes(services, upload_id) is None


async def test_client_disconnect_mid_patch_keeps_the_received_bytes(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"ab")
    sent = await patch_then_disconnect(app, upload_id, 2, [b"cd", b"ef"])

    assert sent[0]["type"] == "http.response.start"
    assert await stored_bytes(services, upload_id) == b"abcdef"
    upload = await record(services, upload_id)
    assert upload.offset == 6
    assert upload.state is UploadState.RECEIVING
    resumed = await head(client, upload_id)
    assert resumed.headers["Upload-Offset"] == "6"
    finished = await patch(client, upload_id, 6, b"ghij")
    assert finished.status_code == 204
    assert (await client.get(f"/files/{upload_id}")).content == b"abcdefghij"


# -- deferred length ----------------------------------------------------------------------------


async def test_deferred_length_is_set_by_a_patch_and_then_fixed(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, None)
    first = await patch(client, upload_id, 0, b"abcd")
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "4"
    assert (await record(services, upload_id)).length is None

    declared = await patch(client, upload_id, 4, b"ef", Upload_Length="8")
    assert declared.status_code == 204
    assert declared.headers["Upload-Offset"] == "6"
    status = await head(client, upload_id)
    assert status.headers["Upload-Length"] == "8"
    assert "Upload-Defer-Length" not in status.headers

    same = await patch(client, upload_id, 6, b"g", Upload_Length="8")
    assert same.status_code == 204

    before = await snapshot(services, upload_id)
    different = await patch(client, upload_id, 7, b"h", Upload_Length="9")
    assert different.status_code == 400
    assert reason(different) == "Upload-Length 9 differs from the upload's length 8"
    assert await snapshot(services, upload_id) == before

    last = await patch(client, upload_id, 7, b"h")
    assert last.status_code == 204
    assert (await client.get(f"/files/{upload_id}")).content == b"abcdefgh"


async def test_declared_length_below_the_offset_is_400(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, None, body=b"abcd")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 4, b"", Upload_Length="3")
    assert response.status_code == 400
    assert reason(response) == "Upload-Length 3 is less than the offset 4"
    assert await snapshot(services, upload_id) == before


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
async def test_bad_declared_length_is_400(
    client: httpx.AsyncClient, services: Services, value: str
) -> None:
    upload_id = await create(client, None, body=b"abcd")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 4, b"e", Upload_Length=value)
    assert response.status_code == 400
    assert reason(response) == f"Upload-Length must be a non-negative integer, got {value!r}"
    assert await snapshot(services, upload_id) == before


async def test_declaring_the_length_equal_to_the_offset_completes(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, None, body=b"abcd")
    response = await patch(client, upload_id, 4, b"", Upload_Length="4")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "4"
    assert (await record(services, upload_id)).state is UploadState.READY
    assert (await client.get(f"/files/{upload_id}")).content == b"abcd"


async def test_declaring_a_length_with_a_wrong_offset_changes_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, None, body=b"abcd")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 2, b"ef", Upload_Length="10")
    assert response.status_code == 409
    assert reason(response) == "Upload-Offset 2 does not match the upload's offset 4"
    assert await snapshot(services, upload_id) == before
    assert (await head(client, upload_id)).headers["Upload-Defer-Length"] == "1"


async def test_declaring_a_length_with_a_body_too_large_changes_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, None, body=b"abcd")
    before = await snapshot(services, upload_id)
    response = await patch(client, upload_id, 4, b"efgh", Upload_Length="6")
    assert response.status_code == 413
    assert reason(response) == "Content-Length 4 exceeds the 2 bytes the upload has left"
    assert await snapshot(services, upload_id) == before


async def test_deferred_length_respects_max_size(data_dir: Path, database_url: str) -> None:
    async with serve(make_settings(data_dir, database_url, max_size=8)) as served:
        client, services = served.client, served.services
        upload_id = await create(client, None, body=b"abcd")
        before = await snapshot(services, upload_id)

        declared = await patch(client, upload_id, 4, b"", Upload_Length="9")
        assert declared.status_code == 413
        assert reason(declared) == "Upload-Length 9 exceeds the maximum size 8"
        assert await snapshot(services, upload_id) == before

        too_much = await patch(client, upload_id, 4, b"efghi")
        assert too_much.status_code == 413
        assert reason(too_much) == "Content-Length 5 exceeds the 4 bytes the upload has left"
        assert await snapshot(services, upload_id) == before


# -- X-HTTP-Method-Override ---------------------------------------------------------------------


async def test_method_override_patch(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 10, body=b"abc")
    response = await client.post(
        f"/files/{upload_id}",
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "3",
            "Content-Type": OFFSET_CT,
        },
        content=b"def",
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "6"
    assert await stored_bytes(services, upload_id) == b"abcdef"


async def test_method_override_delete(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 10, body=b"abc")
    response = await client.post(
        f"/files/{upload_id}", headers={**TUS, "X-HTTP-Method-Override": "DELETE"}
    )
    assert response.status_code == 204
    assert await stored_bytes(services, upload_id) is None
    assert (await record(services, upload_id)).state is UploadState.TERMINATED


async def test_method_override_is_checked_like_the_real_method(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await client.post(
        f"/files/{upload_id}",
        headers={**TUS, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0"},
        content=b"XYZ",
    )
    assert response.status_code == 415
    assert await snapshot(services, upload_id) == before


# -- DELETE -------------------------------------------------------------------------------------


async def test_delete_terminates(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 10, body=b"abc")
    response = await client.delete(f"/files/{upload_id}", headers=TUS)
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.content == b""
    assert await stored_bytes(services, upload_id) is None
    assert (await record(services, upload_id)).state is UploadState.TERMINATED

    assert (await head(client, upload_id)).status_code == 410
    downloaded = await client.get(f"/files/{upload_id}")
    assert downloaded.status_code == 410
    assert reason(downloaded) == "upload was terminated"
    again = await client.delete(f"/files/{upload_id}", headers=TUS)
    assert again.status_code == 410
    assert reason(again) == "upload was terminated"


async def test_delete_of_a_complete_upload(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 3, body=b"abc")
    assert (await client.delete(f"/files/{upload_id}", headers=TUS)).status_code == 204
    assert await stored_bytes(services, upload_id) is None
    assert (await client.get(f"/files/{upload_id}")).status_code == 410


async def test_delete_of_unknown_upload_is_404(client: httpx.AsyncClient) -> None:
    response = await client.delete(f"/files/{UNKNOWN}", headers=TUS)
    assert response.status_code == 404
    assert reason(response) == "no such upload"


async def test_delete_without_version_is_412_and_keeps_the_upload(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await client.delete(f"/files/{upload_id}")
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert reason(response) == "Tus-Resumable is missing; this server supports 1.0.0"
    assert await snapshot(services, upload_id) == before
