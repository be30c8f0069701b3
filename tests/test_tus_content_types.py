"""HTTP tests of ``UPLOAD_ALLOWED_TYPES``: the declared type at creation, the first bytes of the
file on the request that carries offset 0, and that a refused upload stores and commits nothing."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.file_samples import EXE, PNG, VIDEOS
from tests.integrity_helpers import checksum
from tests.tus_http_helpers import (
    BASE_URL,
    OFFSET_CT,
    Served,
    count_uploads,
    create,
    patch,
    reason,
    record,
    serve,
    snapshot,
    stored_bytes,
    stored_files,
)
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

MP4 = VIDEOS["video/mp4"] + b"\x01" * 20_000
REFUSED_PNG = "the file's content is image/png, which is not allowed (allowed: video/*)"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


@pytest.fixture
async def served(data_dir: Path, database_url: str) -> AsyncIterator[Served]:
    async with serve(make_settings(data_dir, database_url, allowed_types="video/*")) as result:
        yield result


async def post(
    client: httpx.AsyncClient, length: int, metadata: str | None = None, body: bytes | None = None
) -> httpx.Response:
    headers = {**TUS, "Upload-Length": str(length)}
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    if body is not None:
        headers["Content-Type"] = OFFSET_CT
    return await client.post("/files/", headers=headers, content=body)


# -- the declared type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        f"filetype {b64('text/html')}",
        f"filetype {b64('video/mp4')},type {b64('image/png')}",
        f"mimetype {b64('application/x-msdownload')}",
        f"filetype {b64('not a type')}",
    ],
)
async def test_a_declared_type_that_is_not_allowed_is_415_and_creates_nothing(
    served: Served, metadata: str
) -> None:
    response = await post(served.client, 10, metadata)
    assert response.status_code == 415
    assert "is not an allowed type (allowed: video/*)" in reason(response)
    assert await count_uploads(served.services) == 0
    assert await stored_files(served.services) == []


@pytest.mark.parametrize(
    "metadata",
    [
        f"filetype {b64('video/mp4')},filename {b64('a.mp4')}",
        f"filetype {b64('Video/QuickTime; codecs=x')}",
        f"filename {b64('no type given')}",  # missing filetype: the first bytes decide
        "filetype",  # a key without a value
        "filetype ",
        "",
    ],
)
async def test_an_allowed_missing_or_empty_declared_type_is_accepted(
    served: Served, metadata: str
) -> None:
    response = await post(served.client, 10, metadata)
    assert response.status_code == 201, response.text


async def test_without_the_setting_any_type_and_any_bytes_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    upload_id = await create(client, len(EXE), metadata=f"filetype {b64('text/html')}")
    assert (await patch(client, upload_id, 0, EXE)).status_code == 204


# -- the first bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(VIDEOS))
async def test_video_containers_are_accepted(served: Served, kind: str) -> None:
    data = VIDEOS[kind] + b"\x02" * 10_000
    upload_id = await create(served.client, len(data))
    response = await patch(served.client, upload_id, 0, data)
    assert response.status_code == 204, response.text
    assert await stored_bytes(served.services, upload_id) == data


@pytest.mark.parametrize("data", [PNG + b"\x00" * 10_000, EXE, b"just some text\n" * 1000])
async def test_a_refused_first_patch_stores_and_commits_nothing(
    served: Served, data: bytes
) -> None:
    upload_id = await create(served.client, len(data) + 100)
    before = await snapshot(served.services, upload_id)
    response = await patch(served.client, upload_id, 0, data)
    assert response.status_code == 415
    assert reason(response).startswith("the file's ")
    after = await snapshot(served.services, upload_id)
    assert after == before
    assert after.data == b""
    assert after.record is not None
    assert (after.record.offset, after.record.received) == (0, 0)
    # left at offset 0 in its state: the client may delete it, or send a file of an allowed type
    assert after.record.state is UploadState.RECEIVING
    status = await served.client.head(f"/files/{upload_id}", headers=TUS)
    assert status.headers["Upload-Offset"] == "0"


async def test_the_client_may_send_an_allowed_file_after_a_refusal(served: Served) -> None:
    upload_id = await create(served.client, len(MP4))
    assert (await patch(served.client, upload_id, 0, PNG)).status_code == 415
    assert (await patch(served.client, upload_id, 0, MP4)).status_code == 204
    assert (await served.client.get(f"/files/{upload_id}")).content == MP4


async def test_the_bytes_decide_whatever_the_metadata_says(served: Served) -> None:
    upload_id = await create(served.client, len(EXE), metadata=f"filetype {b64('video/mp4')}")
    response = await patch(served.client, upload_id, 0, EXE)
    assert response.status_code == 415
    assert reason(response) == (
        "the file's content is application/vnd.microsoft.portable-executable, "
        "which is not allowed (allowed: video/*)"
    )
    assert await stored_bytes(served.services, upload_id) == b""


async def test_creation_with_a_refused_body_creates_nothing(served: Served) -> None:
    response = await post(served.client, len(PNG), body=PNG)
    assert response.status_code == 415
    assert reason(response) == REFUSED_PNG
    assert await count_uploads(served.services) == 0
    assert await stored_files(served.services) == []


async def test_creation_with_an_allowed_body(served: Served) -> None:
    response = await post(served.client, len(MP4), body=MP4[:9000])
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "9000"


async def test_only_offset_0_is_sniffed(served: Served) -> None:
    upload_id = await create(served.client, len(MP4) + len(PNG))
    assert (await patch(served.client, upload_id, 0, MP4)).status_code == 204
    assert (await patch(served.client, upload_id, len(MP4), PNG)).status_code == 204


async def test_a_head_sent_in_small_chunks_is_sniffed_whole_and_stored_intact(
    served: Served,
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(MP4), 700):
            yield MP4[start : start + 700]

    upload_id = await create(served.client, len(MP4))
    response = await patch(served.client, upload_id, 0, pieces())
    assert response.status_code == 204, response.text
    assert await stored_bytes(served.services, upload_id) == MP4


async def test_a_short_first_patch_is_judged_on_what_it_carries(served: Served) -> None:
    upload_id = await create(served.client, len(MP4))
    unknown = await patch(served.client, upload_id, 0, b"\x00\x00\x00")
    assert unknown.status_code == 415
    assert reason(unknown) == (
        "the file's first bytes are not of a known type (allowed: video/*); "
        "send at least its first 8192 bytes in the first request"
    )
    assert await stored_bytes(served.services, upload_id) == b""
    # 40 bytes that show an mp4 are enough, and the rest is not sniffed again
    assert (await patch(served.client, upload_id, 0, MP4[:40])).status_code == 204
    assert (await patch(served.client, upload_id, 40, MP4[40:])).status_code == 204
    assert (await served.client.get(f"/files/{upload_id}")).content == MP4


async def test_a_whole_file_shorter_than_the_head(data_dir: Path, database_url: str) -> None:
    settings = make_settings(data_dir, database_url, allowed_types="image/png")
    async with serve(settings) as served:
        upload_id = await create(served.client, len(PNG))
        assert (await patch(served.client, upload_id, 0, PNG)).status_code == 204
        assert (await record(served.services, upload_id)).state is not UploadState.RECEIVING


async def test_unknown_bytes_pass_when_octet_stream_is_allowed(
    data_dir: Path, database_url: str
) -> None:
    settings = make_settings(
        data_dir, database_url, allowed_types="video/*,application/octet-stream"
    )
    async with serve(settings) as served:
        data = b"plain text\n" * 100
        upload_id = await create(served.client, len(data))
        assert (await patch(served.client, upload_id, 0, data)).status_code == 204
        refused = await create(served.client, len(PNG))
        assert (await patch(served.client, refused, 0, PNG)).status_code == 415


async def test_a_deferred_length_upload_is_sniffed(served: Served) -> None:
    upload_id = await create(served.client, None)
    assert (await patch(served.client, upload_id, 0, PNG)).status_code == 415
    assert (await patch(served.client, upload_id, 0, MP4)).status_code == 204


async def test_an_empty_first_patch_is_not_refused(served: Served) -> None:
    upload_id = await create(served.client, None)
    response = await patch(served.client, upload_id, 0, b"", Upload_Length=str(len(MP4)))
    assert response.status_code == 204
    assert (await record(served.services, upload_id)).length == len(MP4)


# -- checksums ----------------------------------------------------------------------------------


async def test_a_checksummed_allowed_first_chunk_is_committed(served: Served) -> None:
    upload_id = await create(served.client, len(MP4))
    head = MP4[:10_000]
    response = await patch(
        served.client, upload_id, 0, head, Upload_Checksum=checksum("sha1", head)
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "10000"
    assert await stored_bytes(served.services, upload_id) == head


@pytest.mark.parametrize("right", [True, False])
async def test_a_checksummed_refused_first_chunk_stores_nothing(
    served: Served, right: bool
) -> None:
    upload_id = await create(served.client, len(PNG))
    digest = checksum("sha1", PNG if right else b"other")
    response = await patch(served.client, upload_id, 0, PNG, Upload_Checksum=digest)
    assert response.status_code == 415  # the type is checked before the digest
    assert reason(response) == REFUSED_PNG
    upload = await record(served.services, upload_id)
    assert (upload.offset, upload.received) == (0, 0)
    assert await stored_bytes(served.services, upload_id) == b""


# -- concatenation ------------------------------------------------------------------------------


async def partial(client: httpx.AsyncClient, data: bytes | None, length: int) -> str:
    headers = {**TUS, "Upload-Concat": "partial", "Upload-Length": str(length)}
    if data is not None:
        headers["Content-Type"] = OFFSET_CT
    response = await client.post("/files/", headers=headers, content=data)
    assert response.status_code == 201, response.text
    return response.headers["Location"].removeprefix(f"{BASE_URL}/files/")


async def final(client: httpx.AsyncClient, *part_ids: str) -> httpx.Response:
    urls = " ".join(f"/files/{part_id}" for part_id in part_ids)
    return await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{urls}"})


async def test_partial_uploads_are_not_sniffed_and_the_final_checks_the_first_bytes(
    served: Served,
) -> None:
    middle = PNG  # a piece from the middle of a file may look like anything
    first = await partial(served.client, MP4[:5000], 5000)
    second = await partial(served.client, b"", 0)  # an empty part does not hide the start
    third = await partial(served.client, MP4[5000:] + middle, len(MP4) - 5000 + len(middle))
    response = await final(served.client, first, second, third)
    assert response.status_code == 201, response.text


async def test_a_final_whose_first_bytes_are_refused_creates_nothing(served: Served) -> None:
    empty = await partial(served.client, b"", 0)
    first = await partial(served.client, PNG, len(PNG))
    second = await partial(served.client, MP4, len(MP4))
    before = await count_uploads(served.services)
    response = await final(served.client, empty, first, second)
    assert response.status_code == 415
    assert reason(response) == REFUSED_PNG
    assert await count_uploads(served.services) == before
    assert (await record(served.services, first)).finals == ()


async def test_a_final_whose_first_part_is_unfinished_is_415(served: Served) -> None:
    first = await partial(served.client, MP4[:100], len(MP4))
    response = await final(served.client, first)
    assert response.status_code == 415
    assert reason(response) == (
        f"partial upload {first} holds the file's first bytes and must be complete before the "
        "final upload is created, so that the file's type can be checked"
    )
