"""The IETF resumable-upload draft over HTTP, in process: each interop version's creation, offset
retrieval, append, mismatch, cancellation and discovery, and every bad input's 4xx. The 104 and
cut connections are tested at the wire (``tests/e2e/test_ietf_draft.py``)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.draft_fields import PARTIAL, append_fields, completeness, interop
from tests.tus_http_helpers import count_uploads, reason, record, serve, stored_bytes
from upload_service.errors import BadRequest
from upload_service.ops.interim import interim_response
from upload_service.services import Services
from upload_service.tus.draft import INTEROP_VERSIONS
from upload_service.tus.draft_fields import parse_boolean, parse_digests, with_repr_digest
from upload_service.tus.request import TusHeaders
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio

VERSIONS = sorted(INTEROP_VERSIONS)


def upload_id(response: httpx.Response) -> str:
    return response.headers["Location"].rstrip("/").rsplit("/", 1)[1]


async def start(client: httpx.AsyncClient, version: int, data: bytes) -> httpx.Response:
    """A creation whose body is ``data``, the start of a longer file (incomplete)."""
    response = await client.post(
        "/files/", headers={**interop(version), **completeness(version, False)}, content=data
    )
    assert response.status_code == 201, reason(response)
    return response


# -- creation, retrieval and append in every version -------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_upload_in_two_requests(
    client: httpx.AsyncClient, services: Services, version: int
) -> None:
    created = await start(client, version, b"hello ")
    assert created.headers["Upload-Offset"] == "6"
    assert created.headers["Upload-Draft-Interop-Version"] == str(version)
    if version == 3:
        assert created.headers["Upload-Incomplete"] == "?1"
    else:
        assert created.headers["Upload-Complete"] == "?0"
    assert ("Upload-Limit" in created.headers) == (version >= 6)
    target = f"/files/{upload_id(created)}"

    head = await client.head(target, headers=interop(version))
    assert head.status_code == 204
    assert head.headers["Upload-Offset"] == "6"
    assert head.headers["Cache-Control"] == "no-store"
    if version >= 6:
        lifetime = INTEROP_VERSIONS[version].lifetime_key
        assert f"{lifetime}=" in head.headers["Upload-Limit"]

    done = await client.patch(target, headers=append_fields(version, 6, True), content=b"world")
    assert done.status_code == 204, reason(done)
    assert done.headers["Upload-Offset"] == "11"
    if version == 3:
        assert "Upload-Incomplete" not in done.headers
    else:
        assert done.headers["Upload-Complete"] == "?1"
        assert done.headers["Upload-Length"] == "11"
    upload = await record(services, upload_id(created))
    assert upload.length == 11
    assert upload.state in (UploadState.VERIFYING, UploadState.READY)
    assert await stored_bytes(services, upload.id) == b"hello world"


async def test_a_whole_file_in_one_post_is_complete_and_downloadable(
    client: httpx.AsyncClient, services: Services
) -> None:
    data = b"a whole small file"
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    created = await client.post(
        "/files/",
        headers={
            **interop(8),
            "Upload-Complete": "?1",
            "Upload-Length": str(len(data)),
            "Content-Type": "text/plain",
            "Content-Digest": f"sha-256=:{digest}:",
            "Repr-Digest": f"sha-256=:{digest}:",
        },
        content=data,
    )
    assert created.status_code == 201, reason(created)
    assert created.headers["Upload-Complete"] == "?1"
    upload = await record(services, upload_id(created))
    assert upload.metadata["filetype"] == b"text/plain"
    assert (await record(services, upload.id)).state is UploadState.READY
    download = await client.get(f"/files/{upload.id}")
    assert download.content == data


async def test_a_tus_client_can_resume_a_draft_upload(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/files/",
        headers={**interop(6), "Upload-Complete": "?0", "Upload-Length": "4"},
        content=b"ab",
    )
    target = f"/files/{upload_id(created)}"
    head = await client.head(target, headers=TUS)
    assert head.headers["Upload-Offset"] == "2"
    assert head.headers["Upload-Length"] == "4"
    done = await client.patch(
        target,
        headers={**TUS, "Upload-Offset": "2", "Content-Type": "application/offset+octet-stream"},
        content=b"cd",
    )
    assert done.status_code == 204


# -- mismatches, cancellation, discovery --------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_offset_mismatch_is_a_409_with_the_expected_offset(
    client: httpx.AsyncClient, version: int
) -> None:
    created = await start(client, version, b"abc")
    response = await client.patch(
        f"/files/{upload_id(created)}",
        headers=append_fields(version, 1, False),
        content=b"x",
    )
    assert response.status_code == 409
    assert response.headers["Upload-Offset"] == "3"
    if version >= 6:
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"].endswith("#mismatching-upload-offset")
        assert (problem["expected-offset"], problem["provided-offset"]) == (3, 1)


@pytest.mark.parametrize("version", VERSIONS)
async def test_delete_cancels(client: httpx.AsyncClient, services: Services, version: int) -> None:
    created = await start(client, version, b"abc")
    target = f"/files/{upload_id(created)}"
    deleted = await client.delete(target, headers=interop(version))
    assert deleted.status_code == 204
    assert (await client.head(target, headers=interop(version))).status_code in (404, 410)


async def test_options_advertises_the_limits_and_the_append_type(
    data_dir: Path, database_url: str
) -> None:
    async with serve(make_settings(data_dir, database_url, max_size=1000)) as served:
        response = await served.client.options("/files/")
    assert response.status_code == 204
    assert response.headers["Upload-Limit"] == "min-size=0, max-size=1000"
    assert PARTIAL in response.headers["Accept-Patch"]
    assert response.headers["Tus-Version"] == "1.0.0"  # tus discovery unchanged


async def test_too_large_a_creation_is_refused_before_anything_is_stored(
    data_dir: Path, database_url: str
) -> None:
    async with serve(make_settings(data_dir, database_url, max_size=4)) as served:
        response = await served.client.post(
            "/files/", headers={**interop(8), "Upload-Complete": "?1"}, content=b"12345"
        )
        assert response.status_code == 413, reason(response)
        assert response.headers["Upload-Limit"] == "min-size=0, max-size=4"
        assert await count_uploads(served.services) == 0


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2", "7", "99", "abc", "", "6.0"])
async def test_an_unknown_interop_version_is_a_400(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post(
        "/files/", headers={"Upload-Draft-Interop-Version": value, "Upload-Complete": "?1"}
    )
    assert response.status_code == 400
    assert "3, 5, 6, 8" in reason(response)


async def test_a_creation_must_say_whether_it_completes(client: httpx.AsyncClient) -> None:
    response = await client.post("/files/", headers=interop(6), content=b"x")
    assert response.status_code == 400
    assert "Upload-Complete is required" in reason(response)


@pytest.mark.parametrize("value", ["1", "true", "?2", "?"])
async def test_a_malformed_boolean_is_a_400(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post("/files/", headers={**interop(5), "Upload-Complete": value})
    assert response.status_code == 400
    assert "must be ?1 or ?0" in reason(response)


async def test_inconsistent_lengths_are_a_400(
    client: httpx.AsyncClient, services: Services
) -> None:
    response = await client.post(
        "/files/",
        headers={**interop(8), "Upload-Complete": "?1", "Upload-Length": "10"},
        content=b"12345",
    )
    assert response.status_code == 400
    assert "inconsistent" in reason(response)
    assert await count_uploads(services) == 0


@pytest.mark.parametrize("version", [6, 8])
async def test_an_append_needs_the_partial_upload_type_from_interop_6(
    client: httpx.AsyncClient, version: int
) -> None:
    created = await start(client, version, b"abc")
    fields = append_fields(version, 3, True)
    fields["Content-Type"] = "application/offset+octet-stream"
    response = await client.patch(f"/files/{upload_id(created)}", headers=fields, content=b"d")
    assert response.status_code == 415
    assert PARTIAL in reason(response)


async def test_interop_5_appends_take_any_content_type(client: httpx.AsyncClient) -> None:
    created = await start(client, 5, b"abc")
    fields = append_fields(5, 3, True)  # tus-js-client's ietf-draft-03 sends no Content-Type
    response = await client.patch(f"/files/{upload_id(created)}", headers=fields, content=b"d")
    assert response.status_code == 204, reason(response)


@pytest.mark.parametrize("field", ["Upload-Offset", "Upload-Complete"])
async def test_head_and_delete_refuse_upload_fields(client: httpx.AsyncClient, field: str) -> None:
    created = await start(client, 6, b"abc")
    target = f"/files/{upload_id(created)}"
    fields = {**interop(6), field: "?1" if field == "Upload-Complete" else "3"}
    for method in ("HEAD", "DELETE"):
        response = await client.request(method, target, headers=fields)
        assert response.status_code == 400, method
    assert (await client.head(target, headers=interop(6))).status_code == 204  # not deleted


async def test_an_append_without_an_offset_is_a_400(client: httpx.AsyncClient) -> None:
    created = await start(client, 8, b"abc")
    fields = append_fields(8, 3, True)
    del fields["Upload-Offset"]
    response = await client.patch(f"/files/{upload_id(created)}", headers=fields, content=b"d")
    assert response.status_code == 400
    assert "Upload-Offset is required" in reason(response)


async def test_a_wrong_content_digest_appends_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    created = await start(client, 8, b"abc")
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    fields = {**append_fields(8, 3, False), "Content-Digest": f"sha-256=:{wrong}:"}
    response = await client.patch(f"/files/{upload_id(created)}", headers=fields, content=b"def")
    assert 400 <= response.status_code < 500
    assert (await record(services, upload_id(created))).offset == 3


async def test_a_wrong_repr_digest_fails_the_upload_at_verification(
    client: httpx.AsyncClient, services: Services
) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    created = await client.post(
        "/files/",
        headers={**interop(8), "Upload-Complete": "?1", "Repr-Digest": f"sha-256=:{wrong}:"},
        content=b"the file",
    )
    assert created.status_code == 201, reason(created)
    assert (await record(services, upload_id(created))).state is UploadState.FAILED


@pytest.mark.parametrize(
    "value", ["sha-256=abc", "sha-256=:not base64!:", "sha-256", ":abc:", "SHA-256=:YQ==:"]
)
async def test_a_malformed_digest_field_is_a_400(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post(
        "/files/",
        headers={**interop(8), "Upload-Complete": "?1", "Content-Digest": value},
        content=b"x",
    )
    assert response.status_code == 400, value


# -- the pieces, alone --------------------------------------------------------------------------


def test_booleans_and_digests_parse_as_structured_fields() -> None:
    assert parse_boolean("f", "?1") is True
    assert parse_boolean("f", " ?0;x=1") is False
    digests = parse_digests("f", "sha-256=:YQ==:, md5=:YQ==:")
    assert digests == {"sha-256": b"a", "md5": b"a"}


def test_repr_digest_becomes_the_sha256_metadata_once() -> None:
    digest = base64.b64encode(b"\x01" * 32).decode()
    headers = TusHeaders(repr_digest=f"sha-256=:{digest}:")
    merged = with_repr_digest("filename Zm9v", headers)
    assert merged is not None
    assert merged.startswith("filename Zm9v,sha256 ")
    with pytest.raises(BadRequest, match="not both"):
        with_repr_digest(merged, headers)


def test_an_interim_response_is_a_status_line_and_fields() -> None:
    message = interim_response(104, "Upload Resumption Supported", [("Location", "/files/a")])
    assert message == b"HTTP/1.1 104 Upload Resumption Supported\r\nLocation: /files/a\r\n\r\n"
    for status, fields in (
        (200, []),
        (101, []),
        (104, [("Bad Name", "x")]),
        (104, [("X", "a\r\nb")]),
    ):
        with pytest.raises(ValueError, match=r"interim status|not valid"):
            interim_response(status, "x", fields)
