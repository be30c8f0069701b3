"""HTTP tests: the caps on ``Upload-Metadata`` and tus headers repeated with different values."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import (
    OFFSET_CT,
    count_uploads,
    create,
    head,
    reason,
    record,
    serve,
    snapshot,
    stored_files,
)
from upload_service.services import Services

pytestmark = pytest.mark.anyio  # see test_tus_creation.py


def metadata_of(count: int, value: bytes = b"v") -> str:
    encoded = base64.b64encode(value).decode()
    return ",".join(f"k{index} {encoded}" for index in range(count))


async def post(client: httpx.AsyncClient, headers: list[tuple[str, str]]) -> httpx.Response:
    return await client.post("/files/", headers=[*TUS.items(), *headers])


async def assert_nothing_created(services: Services) -> None:
    assert await count_uploads(services) == 0
    assert await stored_files(services) == []


# -- Upload-Metadata caps -----------------------------------------------------------------------


async def test_metadata_at_the_default_caps_is_accepted(client: httpx.AsyncClient) -> None:
    header = metadata_of(32)
    upload_id = await create(client, 5, metadata=header)
    assert (await head(client, upload_id)).headers["Upload-Metadata"] == header

    big = "caption " + base64.b64encode(b"x" * 3066).decode()
    assert len(big) == 4096
    upload_id = await create(client, 5, metadata=big)
    assert (await head(client, upload_id)).headers["Upload-Metadata"] == big


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("name " + "A" * 4092, "Upload-Metadata is 4097 bytes, more than the 4096 allowed"),
        (
            "name " + base64.b64encode(b"x" * 1024 * 1024).decode(),
            "Upload-Metadata is 1398109 bytes, more than the 4096 allowed",
        ),
        (metadata_of(33), "Upload-Metadata has 33 keys, more than the 32 allowed"),
        # the size is checked first, before anything is split or decoded
        (metadata_of(2000, b""), "Upload-Metadata is 12889 bytes, more than the 4096 allowed"),
        (",".join(["a"] * 33), "Upload-Metadata has 33 keys, more than the 32 allowed"),
    ],
)
async def test_metadata_over_a_cap_is_400_and_creates_nothing(
    client: httpx.AsyncClient, services: Services, header: str, message: str
) -> None:
    response = await post(client, [("Upload-Length", "5"), ("Upload-Metadata", header)])
    assert response.status_code == 400
    assert reason(response) == message
    await assert_nothing_created(services)


async def test_the_caps_are_settings(data_dir: Path, database_url: str) -> None:
    settings = make_settings(data_dir, database_url, max_metadata_bytes=20, max_metadata_keys=2)
    async with serve(settings) as served:
        accepted = await post(served.client, [("Upload-Length", "5"), ("Upload-Metadata", "a,b")])
        assert accepted.status_code == 201
        for header, message in [
            ("a,b,c", "Upload-Metadata has 3 keys, more than the 2 allowed"),
            ("name " + "A" * 16, "Upload-Metadata is 21 bytes, more than the 20 allowed"),
        ]:
            refused = await post(
                served.client, [("Upload-Length", "5"), ("Upload-Metadata", header)]
            )
            assert refused.status_code == 400
            assert reason(refused) == message
        assert await count_uploads(served.services) == 1


async def test_a_final_upload_with_metadata_over_the_cap_creates_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    part = await post(
        client, [("Upload-Length", "2"), ("Upload-Concat", "partial"), ("Content-Type", OFFSET_CT)]
    )
    part_id = part.headers["Location"].rsplit("/", 1)[1]
    before = await snapshot(services, part_id)
    response = await post(
        client, [("Upload-Concat", f"final;/files/{part_id}"), ("Upload-Metadata", metadata_of(40))]
    )
    assert response.status_code == 400
    assert reason(response) == "Upload-Metadata has 40 keys, more than the 32 allowed"
    assert await count_uploads(services) == 1
    assert await snapshot(services, part_id) == before


# -- repeated headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ([("Upload-Length", "5"), ("Upload-Length", "6")], "Upload-Length"),
        (
            [("Upload-Defer-Length", "1"), ("Upload-Defer-Length", "2")],
            "Upload-Defer-Length",
        ),
        (
            [("Upload-Length", "5"), ("Upload-Metadata", "a YQ=="), ("Upload-Metadata", "b Yg==")],
            "Upload-Metadata",
        ),
        (
            [("Upload-Length", "5"), ("Upload-Concat", "partial"), ("Upload-Concat", "final;/x")],
            "Upload-Concat",
        ),
        ([("Upload-Length", "5"), ("Tus-Resumable", "0.2.2")], "Tus-Resumable"),
        (
            [("Upload-Length", "5"), ("Content-Type", OFFSET_CT), ("Content-Type", "text/plain")],
            "Content-Type",
        ),
    ],
)
async def test_a_creation_header_repeated_with_another_value_is_400(
    client: httpx.AsyncClient, services: Services, headers: list[tuple[str, str]], name: str
) -> None:
    response = await post(client, headers)
    assert response.status_code == 400
    assert reason(response) == f"{name} is sent 2 times with different values"
    await assert_nothing_created(services)


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ([("Upload-Offset", "0"), ("Upload-Offset", "3")], "Upload-Offset"),
        (
            [("Upload-Offset", "0"), ("Content-Type", "application/octet-stream")],
            "Content-Type",
        ),
        (
            [
                ("Upload-Offset", "0"),
                ("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="),
                ("Upload-Checksum", "sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00="),
            ],
            "Upload-Checksum",
        ),
        (
            [("Upload-Offset", "0"), ("Upload-Length", "3"), ("Upload-Length", "4")],
            "Upload-Length",
        ),
        ([("Upload-Offset", "0"), ("Tus-Resumable", "1.0.1")], "Tus-Resumable"),
    ],
)
async def test_a_patch_header_repeated_with_another_value_is_400_and_changes_nothing(
    client: httpx.AsyncClient, services: Services, headers: list[tuple[str, str]], name: str
) -> None:
    upload_id = await create(client, None)
    before = await snapshot(services, upload_id)
    response = await client.patch(
        f"/files/{upload_id}",
        headers=[*TUS.items(), ("Content-Type", OFFSET_CT), *headers],
        content=b"abc",
    )
    assert response.status_code == 400
    assert reason(response) == f"{name} is sent 2 times with different values"
    assert await snapshot(services, upload_id) == before


async def test_a_header_repeated_three_times_says_so(client: httpx.AsyncClient) -> None:
    response = await post(
        client, [("Upload-Length", "5"), ("Upload-Length", "5"), ("Upload-Length", "7")]
    )
    assert response.status_code == 400
    assert reason(response) == "Upload-Length is sent 3 times with different values"


async def test_identical_repeats_count_once(client: httpx.AsyncClient, services: Services) -> None:
    response = await post(
        client,
        [
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Length", "5"),
            ("Upload-Length", "5"),
            ("Upload-Metadata", "a YQ=="),
            ("Upload-Metadata", "a YQ=="),
        ],
    )
    assert response.status_code == 201, response.text
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    upload = await record(services, upload_id)
    assert upload.length == 5
    assert upload.metadata == {"a": b"a"}

    patched = await client.patch(
        f"/files/{upload_id}",
        headers=[
            *TUS.items(),
            ("Content-Type", OFFSET_CT),
            ("Content-Type", OFFSET_CT),
            ("Upload-Offset", "0"),
            ("Upload-Offset", "0"),
        ],
        content=b"hello",
    )
    assert patched.status_code == 204, patched.text
    assert (await record(services, upload_id)).offset == 5
