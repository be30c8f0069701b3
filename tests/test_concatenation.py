"""HTTP tests of the concatenation extensions: partial uploads, final uploads made of them (also
before the parts are finished), assembly and verification, and every way a final can be refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from tests.conftest import TUS, make_settings
from tests.integrity_helpers import (
    KiB,
    MiB,
    random_bytes,
    running,
    settled,
    sha256_hex,
    status,
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
    set_expires_at,
    stored_bytes,
    stored_files,
)
from upload_service.db.models import UploadRow
from upload_service.services import Services
from upload_service.settings import Settings
from upload_service.storage.base import Digester, Hasher, StorageKey
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

UNKNOWN = "0123456789abcdef0123456789abcdef"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def create_partial(
    client: httpx.AsyncClient,
    length: int | None,
    *,
    body: bytes | None = None,
    metadata: str | None = None,
) -> str:
    headers = {**TUS, "Upload-Concat": "partial"}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    if body is not None:
        headers["Content-Type"] = OFFSET_CT
    response = await client.post("/files/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    return response.headers["Location"].removeprefix(f"{BASE_URL}/files/")


async def post_final(client: httpx.AsyncClient, concat: str, **extra: str) -> httpx.Response:
    headers = {**TUS, "Upload-Concat": concat}
    headers.update({name.replace("_", "-"): value for name, value in extra.items()})
    return await client.post("/files/", headers=headers)


def final_of(*part_ids: str, absolute: bool = False) -> str:
    prefix = f"{BASE_URL}/files/" if absolute else "/files/"
    return "final;" + " ".join(prefix + part for part in part_ids)


async def create_final(client: httpx.AsyncClient, *part_ids: str, **extra: str) -> str:
    response = await post_final(client, final_of(*part_ids), **extra)
    assert response.status_code == 201, response.text
    return response.headers["Location"].removeprefix(f"{BASE_URL}/files/")


async def uploaded_parts(client: httpx.AsyncClient, pieces: list[bytes]) -> list[str]:
    return [await create_partial(client, len(piece), body=piece) for piece in pieces]


# -- partial uploads ----------------------------------------------------------------------------


async def test_a_partial_upload_says_so_on_head(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create_partial(client, 10, body=b"abc")
    response = await head(client, upload_id)
    assert response.status_code == 200
    assert response.headers["Upload-Concat"] == "partial"
    assert response.headers["Upload-Offset"] == "3"
    assert response.headers["Upload-Length"] == "10"
    assert (await record(services, upload_id)).is_partial
    plain = await create(client, 10)
    assert "Upload-Concat" not in (await head(client, plain)).headers


# -- final uploads ------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["relative", "absolute", "mixed"])
async def test_final_upload_of_finished_parts_is_assembled_and_verified(
    app: FastAPI, client: httpx.AsyncClient, services: Services, style: str
) -> None:
    pieces = [random_bytes(n, seed=n) for n in (1 * MiB + 3, 17, 300 * KiB)]
    part_ids = await uploaded_parts(client, pieces)
    urls = [
        f"{BASE_URL}/files/{part}"
        if style == "absolute" or (style == "mixed" and i % 2)
        else f"/files/{part}"
        for i, part in enumerate(part_ids)
    ]
    response = await post_final(client, "final;" + " ".join(urls))
    assert response.status_code == 201, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    final_id = response.headers["Location"].removeprefix(f"{BASE_URL}/files/")

    whole = b"".join(pieces)
    shown = await settled(app, client, final_id)
    assert shown["state"] == "ready"
    assert shown["concat"] == "final"
    assert shown["parts"] == part_ids
    assert shown["length"] == shown["offset"] == len(whole)
    assert shown["sha256"] == sha256_hex(whole)
    download = await client.get(f"/files/{final_id}")
    assert download.status_code == 200
    assert download.content == whole
    status_head = await head(client, final_id)
    assert status_head.headers["Upload-Offset"] == str(len(whole))
    assert status_head.headers["Upload-Length"] == str(len(whole))
    assert status_head.headers["Upload-Concat"] == final_of(*part_ids)
    for part in part_ids:
        assert (await status(client, part))["final_id"] == final_id
        assert (await status(client, part))["finals"] == [final_id]


async def test_the_final_passes_through_verifying(
    app: FastAPI,
    client: httpx.AsyncClient,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pieces = [b"abc", b"defgh"]
    part_ids = await uploaded_parts(client, pieces)
    started, release = anyio.Event(), anyio.Event()
    assert isinstance(services.store, Digester)
    digest = services.store.digest

    async def gated(key: StorageKey, hasher: Hasher) -> bytes:
        started.set()
        await release.wait()
        return await digest(key, hasher)

    monkeypatch.setattr(services.store, "digest", gated)
    final_id = await create_final(client, *part_ids)
    with anyio.fail_after(30):
        await started.wait()  # assembled; the whole-file digest is being computed
    shown = await status(client, final_id)
    assert shown["state"] == "verifying"
    assert shown["sha256"] is None
    assert shown["length"] == 8
    # a download meanwhile waits for the verdict (UPLOAD_DOWNLOAD_VERIFY_WAIT), never a 409
    downloads: list[httpx.Response] = []

    async def download() -> None:
        downloads.append(await client.get(f"/files/{final_id}"))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(download)
            await anyio.sleep(0.3)
            assert downloads == []
            release.set()
    assert downloads[0].status_code == 200
    assert downloads[0].content == b"abcdefgh"
    shown = await settled(app, client, final_id)
    assert shown["state"] == "ready"
    assert shown["sha256"] == sha256_hex(b"abcdefgh")


async def test_an_unfinished_final_waits_for_its_last_part(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    first = await create_partial(client, 4, body=b"ab")
    second = await create_partial(client, 3)
    final_id = await create_final(client, first, second)

    shown = await settled(app, client, final_id)
    assert shown["state"] == "receiving"
    assert shown["length"] == 7
    response = await head(client, final_id)
    assert response.status_code == 200
    assert "Upload-Offset" not in response.headers
    assert response.headers["Upload-Concat"] == f"final;/files/{first} /files/{second}"
    assert response.headers["Upload-Length"] == "7"
    assert (await client.get(f"/files/{final_id}")).status_code == 409

    assert (await patch(client, first, 2, b"cd")).status_code == 204
    assert (await settled(app, client, final_id))["state"] == "receiving"
    assert "Upload-Offset" not in (await head(client, final_id)).headers

    assert (await patch(client, second, 0, b"efg")).status_code == 204
    shown = await settled(app, client, final_id)
    assert shown["state"] == "ready"
    assert shown["sha256"] == sha256_hex(b"abcdefg")
    assert (await head(client, final_id)).headers["Upload-Offset"] == "7"
    assert (await client.get(f"/files/{final_id}")).content == b"abcdefg"


async def test_a_final_with_a_part_of_deferred_length(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    first = await create_partial(client, 2, body=b"ab")
    second = await create_partial(client, None, body=b"cd")
    final_id = await create_final(client, first, second)
    response = await head(client, final_id)
    assert "Upload-Offset" not in response.headers
    assert response.headers["Upload-Defer-Length"] == "1"
    assert (await status(client, final_id))["length"] is None

    assert (await patch(client, second, 2, b"e", Upload_Length="3")).status_code == 204
    shown = await settled(app, client, final_id)
    assert shown["state"] == "ready"
    assert shown["length"] == 5
    assert (await client.get(f"/files/{final_id}")).content == b"abcde"


async def test_patch_to_a_final_upload_is_403(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    part_ids = await uploaded_parts(client, [b"ab", b"cd"])
    unfinished_part = await create_partial(client, 2)
    for final_id in (
        await create_final(client, *part_ids),
        await create_final(client, unfinished_part),
    ):
        await settled(app, client, final_id)
        before = await stored_bytes(services, final_id)
        for offset in (0, 4):
            response = await patch(client, final_id, offset, b"xy")
            assert response.status_code == 403
            assert reason(response) == (
                "a final upload is assembled from its parts and takes no PATCH"
            )
        assert await stored_bytes(services, final_id) == before


async def test_final_metadata_is_its_own(app: FastAPI, client: httpx.AsyncClient) -> None:
    first = await create_partial(client, 2, body=b"ab", metadata=f"filename {b64('one.bin')}")
    second = await create_partial(client, 2, body=b"cd", metadata=f"filename {b64('two.bin')}")
    third = await create_partial(client, 1, body=b"e", metadata=f"filename {b64('x')},a")
    named = await create_final(
        client, first, second, Upload_Metadata=f"filename {b64('whole.bin')},kind {b64('f')}"
    )
    anonymous = await create_final(client, third)
    await settled(app, client, named)

    assert (await head(client, named)).headers["Upload-Metadata"] == (
        f"filename {b64('whole.bin')},kind {b64('f')}"
    )
    assert (await status(client, named))["metadata"] == {"filename": "whole.bin", "kind": "f"}
    download = await client.get(f"/files/{named}")
    assert 'filename="whole.bin"' in download.headers["Content-Disposition"]
    assert "Upload-Metadata" not in (await head(client, anonymous)).headers
    assert (await status(client, anonymous))["metadata"] == {}


@pytest.mark.parametrize("matches", [True, False])
async def test_a_final_is_checked_against_its_own_expected_digest(
    app: FastAPI, client: httpx.AsyncClient, matches: bool
) -> None:
    part_ids = await uploaded_parts(client, [b"abc", b"def"])
    stated = sha256_hex(b"abcdef" if matches else b"abc")
    final_id = await create_final(client, *part_ids, Upload_Metadata=f"sha256 {b64(stated)}")
    shown = await settled(app, client, final_id)
    if matches:
        assert shown["state"] == "ready"
        assert shown["sha256"] == stated
    else:
        assert shown["state"] == "failed"
        assert shown["failure"] == (
            f"sha256 mismatch: expected {stated}, got {sha256_hex(b'abcdef')}"
        )
        assert (await client.get(f"/files/{final_id}")).status_code == 410


# -- refused finals -----------------------------------------------------------------------------


async def test_final_naming_a_missing_part_is_400(
    client: httpx.AsyncClient, services: Services
) -> None:
    part = await create_partial(client, 2, body=b"ab")
    response = await post_final(client, final_of(part, UNKNOWN))
    assert response.status_code == 400
    assert reason(response) == f"partial upload {UNKNOWN} does not exist"
    assert await count_uploads(services) == 1
    assert (await record(services, part)).finals == ()


async def test_final_naming_a_normal_upload_is_400(
    client: httpx.AsyncClient, services: Services
) -> None:
    plain = await create(client, 2, body=b"ab")
    response = await post_final(client, final_of(plain))
    assert response.status_code == 400
    assert reason(response) == f"upload {plain} is not a partial upload"
    assert await count_uploads(services) == 1


async def test_final_naming_another_final_is_400(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    part = await create_partial(client, 2, body=b"ab")
    final_id = await create_final(client, part)
    await settled(app, client, final_id)
    response = await post_final(client, final_of(final_id))
    assert response.status_code == 400
    assert reason(response) == f"upload {final_id} is not a partial upload"


async def test_a_part_of_another_final_forms_a_second_final(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """Was ``test_a_part_claimed_by_another_final_is_400`` (the refusal "already belongs to
    another upload"): the specification lets a partial upload form several finals (#24)."""
    first, second = await uploaded_parts(client, [b"ab", b"cd"])
    earlier = await create_final(client, first)
    await settled(app, client, earlier)
    later = await create_final(client, second, first)
    assert (await settled(app, client, later))["state"] == "ready"
    assert (await client.get(f"/files/{later}")).content == b"cdab"
    assert (await client.get(f"/files/{earlier}")).content == b"ab"
    assert await count_uploads(services) == 4
    assert (await record(services, first)).finals == (earlier, later)
    assert (await record(services, second)).finals == (later,)
    shown = await status(client, first)
    assert (shown["finals"], shown["final_id"]) == ([earlier, later], later)


async def test_a_part_listed_twice_is_400(client: httpx.AsyncClient, services: Services) -> None:
    first, second = await uploaded_parts(client, [b"ab", b"cd"])
    response = await post_final(client, final_of(first, second, first))
    assert response.status_code == 400
    assert reason(response) == f"partial upload {first} is listed twice"
    assert await count_uploads(services) == 2


@pytest.mark.parametrize("ended", ["terminated", "expired"])
async def test_a_part_that_ended_is_400(
    client: httpx.AsyncClient, services: Services, ended: str
) -> None:
    part = await create_partial(client, 4, body=b"ab")
    if ended == "terminated":
        assert (await client.delete(f"/files/{part}", headers=TUS)).status_code == 204
    else:
        await set_expires_at(services, part, datetime.now(UTC) - timedelta(seconds=1))
    response = await post_final(client, final_of(part))
    assert response.status_code == 400
    assert reason(response) == f"partial upload {part} is {ended}"
    assert await count_uploads(services) == 1


@pytest.mark.parametrize(
    ("concat", "message"),
    [
        (
            "final;/uploads/0123456789abcdef0123456789abcdef",
            "Upload-Concat names '/uploads/0123456789abcdef0123456789abcdef', which is not an "
            "upload URL",
        ),
        ("final;/files/abc", "Upload-Concat names '/files/abc', which is not an upload URL"),
        (
            f"final;/files/{UNKNOWN}/extra",
            f"Upload-Concat names '/files/{UNKNOWN}/extra', which is not an upload URL",
        ),
        ("final;", "Upload-Concat: final lists no partial uploads"),
        ("final;   ", "Upload-Concat: final lists no partial uploads"),
        ("final", "Upload-Concat must be 'partial' or 'final;<url> <url> ...'"),
        ("other", "Upload-Concat must be 'partial' or 'final;<url> <url> ...'"),
        ("partial;x", "Upload-Concat must be 'partial' or 'final;<url> <url> ...'"),
        ("", "Upload-Concat must be 'partial' or 'final;<url> <url> ...'"),
    ],
)
async def test_malformed_upload_concat_is_400(
    client: httpx.AsyncClient, services: Services, concat: str, message: str
) -> None:
    response = await post_final(client, concat)
    assert response.status_code == 400
    assert reason(response) == message
    assert await count_uploads(services) == 0


async def test_a_final_with_upload_length_is_400(
    client: httpx.AsyncClient, services: Services
) -> None:
    part = await create_partial(client, 2, body=b"ab")
    for extra in ({"Upload_Length": "2"}, {"Upload_Defer_Length": "1"}):
        response = await post_final(client, final_of(part), **extra)
        assert response.status_code == 400
        assert reason(response) == (
            "a final upload takes its length from its parts: omit Upload-Length"
        )
    assert await count_uploads(services) == 1
    assert (await record(services, part)).finals == ()


async def test_a_final_with_a_body_is_400(client: httpx.AsyncClient, services: Services) -> None:
    part = await create_partial(client, 2, body=b"ab")
    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Concat": final_of(part), "Content-Type": OFFSET_CT},
        content=b"cd",
    )
    assert response.status_code == 400
    assert reason(response) == "a final upload cannot carry data"
    assert await count_uploads(services) == 1


async def test_two_finals_racing_for_one_part(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """Both are created (this test used to expect one 201 and one 400, "already belongs to
    another upload": a part may now form several finals, #24), each its own copy."""
    part = await create_partial(client, 2, body=b"ab")
    responses: list[httpx.Response] = []

    async def claim() -> None:
        responses.append(await post_final(client, final_of(part)))

    async with anyio.create_task_group() as group:
        group.start_soon(claim)
        group.start_soon(claim)

    assert [response.status_code for response in responses] == [201, 201]
    finals = [
        response.headers["Location"].removeprefix(f"{BASE_URL}/files/") for response in responses
    ]
    assert set((await record(services, part)).finals) == set(finals)
    assert await count_uploads(services) == 3
    assert sorted(await stored_files(services)) == sorted([part, *finals])
    for final_id in finals:
        assert (await settled(app, client, final_id))["state"] == "ready"
        assert (await client.get(f"/files/{final_id}")).content == b"ab"


async def test_a_final_racing_the_deletion_of_its_part(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    """A final created while its part is being deleted: one of the two wins, never both (a
    final left waiting for a part that is gone)."""
    for _ in range(5):
        part = await create_partial(client, 4, body=b"ab")
        final, deleted = await _final_against_delete(client, part)
        if final.status_code == 201:
            assert deleted.status_code == 409, deleted.text
            final_id = final.headers["Location"].removeprefix(f"{BASE_URL}/files/")
            assert reason(deleted) == (
                f"partial upload belongs to final upload {final_id}, not assembled yet"
            )
            assert await stored_bytes(services, part) == b"ab"
        else:
            assert (final.status_code, deleted.status_code) == (400, 204)
            assert reason(final) in (
                f"partial upload {part} is terminated",
                f"partial upload {part} ended meanwhile",
            )
            assert await stored_bytes(services, part) is None


async def _final_against_delete(
    client: httpx.AsyncClient, part: str
) -> tuple[httpx.Response, httpx.Response]:
    """A final of ``part`` and the part's DELETE, sent at once: their responses."""
    responses: dict[str, httpx.Response] = {}

    async def create_final_of() -> None:
        responses["final"] = await post_final(client, final_of(part))

    async def delete_part() -> None:
        responses["delete"] = await client.delete(f"/files/{part}", headers=TUS)

    async with anyio.create_task_group() as group:
        group.start_soon(create_final_of)
        group.start_soon(delete_part)
    return responses["final"], responses["delete"]


async def test_a_final_longer_than_the_maximum_size_is_413(
    data_dir: Path, database_url: str
) -> None:
    async with running(make_settings(data_dir, database_url, max_size=5)) as served:
        client, services = served.client, served.services
        part_ids = await uploaded_parts(client, [b"abc", b"def"])
        response = await post_final(client, final_of(*part_ids))
        assert response.status_code == 413
        assert reason(response) == "Upload-Length 6 exceeds the maximum size 5"
        assert await count_uploads(services) == 2
        assert (await record(services, part_ids[0])).finals == ()


# -- parts and their final ----------------------------------------------------------------------


async def test_deleting_a_part_of_an_unassembled_final_is_409(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    first = await create_partial(client, 2, body=b"ab")
    second = await create_partial(client, 2)
    final_id = await create_final(client, first, second)
    for part in (first, second):
        response = await client.delete(f"/files/{part}", headers=TUS)
        assert response.status_code == 409
        assert reason(response) == (
            f"partial upload belongs to final upload {final_id}, not assembled yet"
        )
        assert (await record(services, part)).state is not UploadState.TERMINATED
    assert await stored_bytes(services, first) == b"ab"

    assert (await patch(client, second, 0, b"cd")).status_code == 204
    assert (await settled(app, client, final_id))["state"] == "ready"
    # Once assembled the final holds its own bytes: its parts can go.
    for part in (first, second):
        assert (await client.delete(f"/files/{part}", headers=TUS)).status_code == 204
    assert (await client.get(f"/files/{final_id}")).content == b"abcd"


async def test_a_final_fails_when_a_part_expires(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    done = await create_partial(client, 2, body=b"ab")
    late = await create_partial(client, 5, body=b"cd")
    final_id = await create_final(client, done, late)
    await set_expires_at(services, late, datetime.now(UTC) - timedelta(seconds=1))

    assert await services.handler.lifecycle.expire() == 1

    shown = await settled(app, client, final_id)
    assert shown["state"] == "failed"
    assert shown["failure"] == f"partial upload {late} is expired"
    assert (await status(client, late))["state"] == "expired"
    assert (await head(client, final_id)).status_code == 410
    download = await client.get(f"/files/{final_id}")
    assert download.status_code == 410
    assert reason(download) == f"upload failed: partial upload {late} is expired"
    assert (await status(client, done))["state"] == "ready"


async def test_start_up_assembles_a_final_left_waiting(settings: Settings) -> None:
    async with running(settings) as first:
        part_ids = await uploaded_parts(first.client, [b"abc", b"def"])
        final_id = await create_final(first.client, *part_ids)
        assert (await settled(first.app, first.client, final_id))["state"] == "ready"
        # As if the process stopped after creating the final but before assembling it.
        async with first.services.engine.begin() as connection:
            await connection.execute(
                update(UploadRow)
                .where(UploadRow.id == final_id)
                .values(state="receiving", length=None, upload_offset=0, received=0, sha256=None)
            )
        path = anyio.Path(settings.storage.files_dir / final_id)
        await path.write_bytes(b"")

    async with running(settings) as second:
        shown = await settled(second.app, second.client, final_id)
        assert shown["state"] == "ready"
        assert shown["sha256"] == sha256_hex(b"abcdef")
        assert (await second.client.get(f"/files/{final_id}")).content == b"abcdef"


async def test_deferred_parts_over_the_maximum_size_fail_the_final(
    data_dir: Path, database_url: str
) -> None:
    """Lengths unknown at creation are checked at assembly: the final fails with the reason."""
    async with running(make_settings(data_dir, database_url, max_size=5)) as served:
        app, client = served.app, served.client
        first = await create_partial(client, 3, body=b"abc")
        second = await create_partial(client, None, body=b"de")
        final_id = await create_final(client, first, second)
        assert (await patch(client, second, 2, b"f", Upload_Length="3")).status_code == 204
        shown = await settled(app, client, final_id)
        assert shown["state"] == "failed"
        assert shown["failure"] == "assembled length 6 exceeds the maximum size 5"
        assert (await client.get(f"/files/{final_id}")).status_code == 410


async def test_deleting_an_unassembled_final_frees_its_parts(
    app: FastAPI, client: httpx.AsyncClient, services: Services
) -> None:
    first = await create_partial(client, 2, body=b"ab")
    second = await create_partial(client, 2)
    abandoned = await create_final(client, first, second)
    assert (await client.delete(f"/files/{abandoned}", headers=TUS)).status_code == 204
    for part in (first, second):
        assert (await record(services, part)).finals == ()

    final_id = await create_final(client, first, second)
    assert (await patch(client, second, 0, b"cd")).status_code == 204
    assert (await settled(app, client, final_id))["state"] == "ready"
    assert (await client.get(f"/files/{final_id}")).content == b"abcd"
