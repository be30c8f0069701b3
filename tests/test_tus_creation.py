"""HTTP tests: discovery (OPTIONS), Tus-Resumable handling, creation, metadata, creation-with-upload."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import (
    OFFSET_CT,
    count_uploads,
    create,
    head,
    reason,
    record,
    serve,
    stored_bytes,
    stored_files,
)
from upload_service.services import Services
from upload_service.uploads import UploadState

# Marked here, not only by the conftest hook: anyio's plugin replaces items that are marked after
# collection with one item per backend, which drops their parametrize arguments.
pytestmark = pytest.mark.anyio

EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "concatenation",
    "concatenation-unfinished",
}
HTTP_DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
HEX_ID = re.compile(r"[0-9a-f]{32}")


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def assert_nothing_created(services: Services) -> None:
    assert await count_uploads(services) == 0
    assert await stored_files(services) == []


# -- OPTIONS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/files/", "/files/" + "a" * 32])
async def test_options_advertises_version_and_extensions(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.options(path)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    extensions = {part.strip() for part in response.headers["Tus-Extension"].split(",")}
    assert extensions == EXTENSIONS
    assert "Tus-Max-Size" not in response.headers


async def test_options_needs_no_tus_resumable_and_ignores_a_wrong_one(
    client: httpx.AsyncClient,
) -> None:
    response = await client.options("/files/", headers={"Tus-Resumable": "0.2.2"})
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"


async def test_options_announces_max_size_when_set(data_dir: Path, database_url: str) -> None:
    async with serve(make_settings(data_dir, database_url, max_size=1000)) as served:
        response = await served.client.options("/files/")
    assert response.status_code == 204
    assert response.headers["Tus-Max-Size"] == "1000"


# -- Tus-Resumable ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"), [(None, "missing"), ("0.2.2", "'0.2.2'"), ("1.0", "'1.0'")]
)
async def test_post_without_supported_version_is_412_and_creates_nothing(
    client: httpx.AsyncClient, services: Services, value: str | None, shown: str
) -> None:
    headers = {"Upload-Length": "5", "Content-Type": OFFSET_CT}
    if value is not None:
        headers["Tus-Resumable"] = value
    response = await client.post("/files/", headers=headers, content=b"hello")
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert reason(response) == f"Tus-Resumable is {shown}; this server supports 1.0.0"
    assert "Location" not in response.headers
    await assert_nothing_created(services)


async def test_head_without_version_is_412(client: httpx.AsyncClient, services: Services) -> None:
    upload_id = await create(client, 5)
    response = await client.head(f"/files/{upload_id}")
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Offset" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", "/files/" + "a" * 32, 405),
        ("POST", "/files/" + "a" * 32, 405),
        ("GET", "/files/", 405),
        ("GET", "/files/a/b", 404),
        ("HEAD", "/files/" + "a" * 32, 404),
        ("PATCH", "/files/" + "a" * 32, 404),
        ("DELETE", "/files/" + "a" * 32, 404),
        ("GET", "/files/" + "a" * 32, 404),
        ("HEAD", "/files/..%2Fetc", 404),
        ("POST", "/files", 307),
    ],
)
async def test_every_files_response_carries_tus_resumable(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT}
    response = await client.request(method, path, headers=headers)
    assert response.status_code == status
    assert response.headers["Tus-Resumable"] == "1.0.0"


async def test_api_responses_do_not_carry_tus_resumable(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert "Tus-Resumable" not in response.headers


# -- creation -----------------------------------------------------------------------------------


async def test_create_returns_absolute_location_and_expiry(
    client: httpx.AsyncClient, services: Services
) -> None:
    before = datetime.now(UTC)
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "100"})
    assert response.status_code == 201
    assert response.headers["Tus-Resumable"] == "1.0.0"
    location = response.headers["Location"]
    match = re.fullmatch(r"http://testserver/files/([0-9a-f]{32})", location)
    assert match is not None
    upload_id = match.group(1)
    assert response.headers["Upload-Offset"] == "0"

    expires_header = response.headers["Upload-Expires"]
    assert HTTP_DATE.fullmatch(expires_header)
    expires = parsedate_to_datetime(expires_header)
    assert expires.tzinfo is not None
    upload = await record(services, upload_id)
    assert upload.expires_at is not None
    assert expires == upload.expires_at.replace(microsecond=0)
    week = timedelta(seconds=services.settings.limits.expire_after)
    assert before + week - timedelta(seconds=1) <= expires

    assert upload.length == 100
    assert upload.offset == 0
    assert upload.state is UploadState.RECEIVING
    assert await stored_bytes(services, upload_id) == b""


async def test_location_follows_the_request_host(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "https://uploads.example:8443/files/", headers={**TUS, "Upload-Length": "1"}
    )
    assert response.status_code == 201
    assert response.headers["Location"].startswith("https://uploads.example:8443/files/")


async def test_zero_length_upload_is_complete_at_once(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "0"})
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    assert "Upload-Expires" not in response.headers
    location = response.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    upload = await record(services, upload_id)
    assert upload.state is UploadState.READY
    assert upload.completed_at is not None

    status = await client.head(location, headers=TUS)
    assert status.headers["Upload-Offset"] == "0"
    assert status.headers["Upload-Length"] == "0"
    downloaded = await client.get(location)
    assert downloaded.status_code == 200
    assert downloaded.content == b""
    assert downloaded.headers["Content-Length"] == "0"


@pytest.mark.parametrize(
    "value",
    ["-1", "abc", "1.5", "", "1e3", "0x10", "+5", "9223372036854775808", "99999999999999999999"],
)
async def test_bad_upload_length_is_400(
    client: httpx.AsyncClient, services: Services, value: str
) -> None:
    response = await client.post("/files/", headers={**TUS, "Upload-Length": value})
    assert response.status_code == 400
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert reason(response) == f"Upload-Length must be a non-negative integer, got {value!r}"
    await assert_nothing_created(services)


async def test_largest_signed_64_bit_length_is_accepted(data_dir: Path, database_url: str) -> None:
    # Without reserving space (UPLOAD_RESERVE_SPACE=false): no disk holds 2**63 - 1 bytes, and a
    # store that reserves refuses the upload with 507 (next test); the parser accepts the length.
    settings = make_settings(data_dir, database_url, reserve_space=False, min_free_bytes=0)
    async with serve(settings) as served:
        response = await served.client.post(
            "/files/", headers={**TUS, "Upload-Length": str(2**63 - 1)}
        )
    assert response.status_code == 201


async def test_a_length_no_disk_holds_is_a_507_at_creation_and_creates_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post("/files/", headers={**TUS, "Upload-Length": str(2**63 - 1)})
    assert response.status_code == 507
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert reason(response).startswith("cannot create upload: storage is full")
    await assert_nothing_created(services)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"Upload-Length": "5", "Upload-Defer-Length": "1"},
            "send either Upload-Length or Upload-Defer-Length, not both",
        ),
        ({"Upload-Defer-Length": "0"}, "Upload-Defer-Length must be 1"),
        ({"Upload-Defer-Length": "2"}, "Upload-Defer-Length must be 1"),
        ({"Upload-Defer-Length": "yes"}, "Upload-Defer-Length must be 1"),
        ({}, "Upload-Length or Upload-Defer-Length: 1 is required"),
    ],
)
async def test_bad_length_headers_are_400(
    client: httpx.AsyncClient, services: Services, headers: dict[str, str], message: str
) -> None:
    response = await client.post("/files/", headers={**TUS, **headers})
    assert response.status_code == 400
    assert reason(response) == message
    await assert_nothing_created(services)


async def test_deferred_length_creation(client: httpx.AsyncClient, services: Services) -> None:
    response = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    assert response.status_code == 201
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    assert (await record(services, upload_id)).length is None
    status = await head(client, upload_id)
    assert status.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in status.headers


async def test_over_max_size_is_413(data_dir: Path, database_url: str) -> None:
    async with serve(make_settings(data_dir, database_url, max_size=100)) as served:
        response = await served.client.post("/files/", headers={**TUS, "Upload-Length": "101"})
        assert response.status_code == 413
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert reason(response) == "Upload-Length 101 exceeds the maximum size 100"
        await assert_nothing_created(served.services)

        at_limit = await served.client.post("/files/", headers={**TUS, "Upload-Length": "100"})
        assert at_limit.status_code == 201


# -- Upload-Metadata ----------------------------------------------------------------------------


async def test_metadata_is_echoed_on_head_and_decoded_in_json(
    client: httpx.AsyncClient,
) -> None:
    header = f"filename {b64('vidéo.mp4')},is_confidential,filetype {b64('video/mp4')}"
    upload_id = await create(client, 10, metadata=header)
    status = await head(client, upload_id)
    assert status.status_code == 200
    assert status.headers["Upload-Metadata"] == header

    info = await client.get(f"/api/uploads/{upload_id}")
    assert info.json()["metadata"] == {
        "filename": "vidéo.mp4",
        "is_confidential": None,
        "filetype": "video/mp4",
    }


async def test_empty_value_and_whitespace_around_pairs_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    upload_id = await create(client, 10, metadata=f" empty , name {b64('x')} ")
    info = await client.get(f"/api/uploads/{upload_id}")
    assert info.json()["metadata"] == {"empty": None, "name": "x"}


async def test_no_metadata_means_no_metadata_header(client: httpx.AsyncClient) -> None:
    upload_id = await create(client, 10)
    status = await head(client, upload_id)
    assert "Upload-Metadata" not in status.headers


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("filename ***", "Upload-Metadata value of 'filename' is not valid base64"),
        ("filename dGVzdA", "Upload-Metadata value of 'filename' is not valid base64"),
        ("filename dGVzdA==dGVzdA==", "Upload-Metadata value of 'filename' is not valid base64"),
        ("filename dGVz_A==", "Upload-Metadata value of 'filename' is not valid base64"),
        ("a YQ==,a Yg==", "Upload-Metadata key 'a' appears twice"),
        ("a,a", "Upload-Metadata key 'a' appears twice"),
        ("my key YQ==", "Upload-Metadata pair 'my key YQ==' is not 'key base64value'"),
        ("a  YQ==", "Upload-Metadata pair 'a  YQ==' is not 'key base64value'"),
        ("a YQ==,,b Yg==", "Upload-Metadata pair '' is not 'key base64value'"),
        ("a YQ==,", "Upload-Metadata pair '' is not 'key base64value'"),
        ("k/ey YQ==", "Upload-Metadata key 'k/ey' is not a valid token"),
        ("k=y YQ==", "Upload-Metadata key 'k=y' is not a valid token"),
    ],
)
async def test_bad_metadata_is_400(
    client: httpx.AsyncClient, services: Services, header: str, message: str
) -> None:
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": header}
    )
    assert response.status_code == 400
    assert reason(response) == message
    await assert_nothing_created(services)


# -- creation-with-upload -----------------------------------------------------------------------


async def test_creation_with_upload_stores_the_first_bytes(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "10", "Content-Type": OFFSET_CT},
        content=b"hello",
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    assert "Upload-Expires" in response.headers
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    assert await stored_bytes(services, upload_id) == b"hello"
    upload = await record(services, upload_id)
    assert upload.offset == 5
    assert upload.state is UploadState.RECEIVING
    status = await head(client, upload_id)
    assert status.headers["Upload-Offset"] == "5"


async def test_creation_with_the_whole_file_completes_it(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "5", "Content-Type": OFFSET_CT},
        content=b"hello",
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    assert "Upload-Expires" not in response.headers
    location = response.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    assert (await record(services, upload_id)).state is UploadState.READY
    assert (await client.get(location)).content == b"hello"


async def test_creation_with_upload_on_a_deferred_length(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Defer-Length": "1", "Content-Type": OFFSET_CT},
        content=b"abc",
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "3"
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    assert await stored_bytes(services, upload_id) == b"abc"


async def test_creation_body_with_another_content_type_is_ignored(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "10", "Content-Type": "text/plain"},
        content=b"hello",
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    assert await stored_bytes(services, upload_id) == b""


async def test_creation_body_larger_than_length_is_413_and_creates_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "3", "Content-Type": OFFSET_CT},
        content=b"hello",
    )
    assert response.status_code == 413
    assert reason(response) == "Content-Length 5 exceeds the 3 bytes the upload has left"
    await assert_nothing_created(services)


async def test_creation_body_over_max_size_on_deferred_length_is_413(
    data_dir: Path, database_url: str
) -> None:
    async with serve(make_settings(data_dir, database_url, max_size=4)) as served:
        response = await served.client.post(
            "/files/",
            headers={**TUS, "Upload-Defer-Length": "1", "Content-Type": OFFSET_CT},
            content=b"hello",
        )
        assert response.status_code == 413
        assert reason(response) == "Content-Length 5 exceeds the 4 bytes the upload has left"
        await assert_nothing_created(served.services)


async def test_chunked_creation_body_past_length_leaves_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The 413 carries no Location, so the client cannot find the upload: it must not exist."""

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"defgh"

    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "5", "Content-Type": OFFSET_CT},
        content=body(),
    )
    assert response.status_code == 413
    assert reason(response) == "request body exceeds the 5 bytes left"
    assert "Location" not in response.headers
    assert await stored_files(services) == []
    async with services.engine.connect() as connection:
        states = (await connection.execute(text("SELECT state FROM uploads"))).scalars().all()
    assert states == ["terminated"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/files/" + "a" * 32, "OPTIONS, HEAD, PATCH, DELETE, GET"),
        ("POST", "/files/" + "a" * 32, "OPTIONS, HEAD, PATCH, DELETE, GET"),
        ("GET", "/files/", "OPTIONS, POST"),
        ("DELETE", "/files/", "OPTIONS, POST"),
    ],
)
async def test_405_lists_every_supported_method_in_one_line(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path, headers=TUS)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert reason(response) == f"{method} is not allowed here"


async def test_unknown_path_under_files_is_a_plain_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/files/a/b", headers=TUS)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/plain")
    assert reason(response) == "Not Found"
