"""HTTP tests of partial uploads that form several final uploads (#24: the concatenation extension
lets a partial upload be used more than once), on the local store and on S3 (moto's server):
finals of overlapping parts (A+B, C+B) are each their own byte-identical copy, deleting a shared
part afterwards leaves them whole, a part that a final still waits for is kept (409), each final
counts in full against the owner's quota, and a part that expires fails every final naming it."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from tests import s3 as moto
from tests.conftest import TUS, empty_database, make_settings
from tests.integrity_helpers import Running, running, settled, status
from tests.test_auth import AUDIENCE, ISSUER, SECRET, bearer, hs256
from tests.test_concatenation import create_final, create_partial, final_of, post_final
from tests.tus_http_helpers import count_uploads, create, head, patch, reason, set_expires_at
from upload_service.auth.owners import jwt_owner
from upload_service.db.models import UploadRow
from upload_service.errors import NotFound
from upload_service.uploads import Upload

ALICE = jwt_owner(ISSUER, "alice")

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
S3_PART = 5 * MiB


def data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Which finals name a part, and refusals while one waits, are the database's (serialised there),
# the copies the store's: each store on the embedded default, and PostgreSQL under the local store.
BACKENDS = [("local", "sqlite"), ("s3", "sqlite"), ("local", "postgres")]


@pytest.fixture(params=BACKENDS, ids=["-".join(backend) for backend in BACKENDS])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    store, database = request.param
    return store, database


@pytest.fixture
def store_settings(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    backend: tuple[str, str],
) -> dict[str, object]:
    """The settings of the store under test: the local disk, or a bucket of its own on moto."""
    if backend[0] == "local":
        return {}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    endpoint: str = request.getfixturevalue("moto_endpoint")
    return {
        "storage": "s3",
        "s3_bucket": moto.new_bucket(endpoint),
        "s3_endpoint_url": endpoint,
        "s3_prefix": "shared/",
        "s3_part_size": S3_PART,
        "max_size": 64 * MiB,
    }


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, tmp_path: Path, backend: tuple[str, str]) -> str:
    """An empty migrated database of the backend's kind."""
    return empty_database(request, backend[1], tmp_path)


@pytest.fixture
async def served(
    tmp_path: Path, backend_url: str, store_settings: dict[str, object]
) -> AsyncIterator[Running]:
    settings = make_settings(tmp_path / "data", backend_url, **store_settings)
    async with running(settings) as result:
        yield result


async def ready_parts(served: Running, *pieces: bytes) -> list[str]:
    """Partial uploads holding ``pieces``, each uploaded and verified."""
    part_ids = [await create_partial(served.client, len(piece), body=piece) for piece in pieces]
    for part_id in part_ids:
        assert (await settled(served.app, served.client, part_id))["state"] == "ready"
    return part_ids


async def stored(served: Running, upload_id: str) -> bytes | None:
    """The upload's bytes as its store holds them (None: the store has none), read through the
    store, not the download route."""
    upload = await served.services.repository.get(upload_id)
    assert upload is not None
    return await _store_content(served, upload)


async def _store_content(served: Running, upload: Upload) -> bytes | None:
    store = served.services.store
    try:
        size = await store.size(upload.storage)
    except NotFound:
        return None
    return b"".join([piece async for piece in store.read(upload.storage, 0, size)])


async def downloaded(client: httpx.AsyncClient, upload_id: str) -> bytes:
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200, response.text
    return response.content


async def test_two_finals_of_overlapping_parts_are_each_their_own_copy(served: Running) -> None:
    client = served.client
    # A spans more than one S3 part (UploadPartCopy), B and C end in a spooled part
    a, b, c = data(S3_PART + 7, 1), data(3 * MiB + 1, 2), data(17, 3)
    part_a, part_b, part_c = await ready_parts(served, a, b, c)
    first = await create_final(client, part_a, part_b)
    second = await create_final(client, part_c, part_b)
    for final_id, whole in ((first, a + b), (second, c + b)):
        shown = await settled(served.app, client, final_id)
        assert shown["state"] == "ready", shown
        assert (shown["length"], shown["sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())
        assert await downloaded(client, final_id) == whole
        assert await stored(served, final_id) == whole
        assert (await head(client, final_id)).headers["Upload-Offset"] == str(len(whole))
    for part_id, piece in ((part_a, a), (part_b, b), (part_c, c)):
        assert await stored(served, part_id) == piece  # the parts are left as they were
    shown = await status(client, part_b)
    assert (shown["finals"], shown["final_id"]) == ([first, second], second)
    assert (await status(client, part_a))["finals"] == [first]
    assert (await status(client, part_c))["finals"] == [second]


async def test_deleting_a_shared_part_leaves_its_finals_intact(served: Running) -> None:
    client, services = served.client, served.services
    a, b, c = data(S3_PART + 3, 4), data(2 * MiB, 5), data(1000, 6)
    part_a, part_b, part_c = await ready_parts(served, a, b, c)
    first = await create_final(client, part_a, part_b)
    second = await create_final(client, part_c, part_b)
    for final_id in (first, second):
        assert (await settled(served.app, client, final_id))["state"] == "ready"

    assert (await client.delete(f"/files/{part_b}", headers=TUS)).status_code == 204
    assert await stored(served, part_b) is None
    assert (await head(client, part_b)).status_code == 410
    for final_id, whole in ((first, a + b), (second, c + b)):
        assert await downloaded(client, final_id) == whole
        assert await stored(served, final_id) == whole

    for part_id in (part_a, part_c):
        assert (await client.delete(f"/files/{part_id}", headers=TUS)).status_code == 204
    # the parts' tombstones age past the tombstone period: clean-up forgets them
    async with services.engine.begin() as connection:
        await connection.execute(
            update(UploadRow)
            .where(UploadRow.id.in_([part_a, part_b, part_c]))
            .values(state_changed_at=datetime.now(UTC) - timedelta(days=30))
        )
    await services.handler.lifecycle.expire()
    assert await count_uploads(services) == 2
    for final_id, whole in ((first, a + b), (second, c + b)):
        shown = await status(client, final_id)
        assert (shown["state"], shown["sha256"]) == ("ready", hashlib.sha256(whole).hexdigest())
        assert await downloaded(client, final_id) == whole


async def test_a_shared_part_is_kept_while_any_final_waits_for_it(served: Running) -> None:
    client = served.client
    (part_a,) = await ready_parts(served, b"aaaa")
    part_b = await create_partial(client, 6, body=b"bbb")  # unfinished
    (part_c,) = await ready_parts(served, b"cc")
    first = await create_final(client, part_a, part_b)
    second = await create_final(client, part_c, part_b)

    for waiting in (first, second):  # the oldest final still waiting is named
        response = await client.delete(f"/files/{part_b}", headers=TUS)
        assert response.status_code == 409
        assert reason(response) == (
            f"partial upload belongs to final upload {waiting}, not assembled yet"
        )
        shown = await status(client, part_b)
        assert (shown["state"], shown["finals"][0]) == ("receiving", waiting)
        if waiting == first:  # an abandoned final lets go of it; the other still holds it
            assert (await client.delete(f"/files/{first}", headers=TUS)).status_code == 204
    assert await stored(served, part_b) == b"bbb"

    assert (await patch(client, part_b, 3, b"BBB")).status_code == 204
    assert (await settled(served.app, client, second))["state"] == "ready"
    assert (await client.delete(f"/files/{part_b}", headers=TUS)).status_code == 204
    assert await downloaded(client, second) == b"ccbbbBBB"
    assert await stored(served, second) == b"ccbbbBBB"


async def test_each_final_counts_in_full_against_the_owners_quota(
    tmp_path: Path, backend_url: str, store_settings: dict[str, object]
) -> None:
    """Parts of 3, 4 and 2 bytes, finals A+B (7) and C+B (6): 22 bytes stored, a quota of 22
    is full, and a third final of A+B is refused (its copy would be 7 more)."""
    settings = make_settings(
        tmp_path / "data",
        backend_url,
        auth_jwt_secret=SECRET,
        auth_jwt_audience=AUDIENCE,
        auth_jwt_issuer=ISSUER,
        quota_bytes=22,
        **store_settings,
    )
    async with running(settings) as served:
        client, services = served.client, served.services
        client.headers.update(bearer(hs256("alice")))
        part_a, part_b, part_c = await ready_parts(served, b"aaa", b"bbbb", b"cc")
        first = await create_final(client, part_a, part_b)
        second = await create_final(client, part_c, part_b)
        for final_id in (first, second):
            assert (await settled(served.app, client, final_id))["state"] == "ready"
        assert (await services.repository.usage(ALICE)).bytes == 3 + 4 + 2 + 7 + 6

        refused = await post_final(client, final_of(part_a, part_b))
        assert refused.status_code == 403
        assert reason(refused).startswith("quota exceeded: 22 bytes stored")
        one_more = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert one_more.status_code == 403
        assert await count_uploads(services) == 5

        # deleting the shared part frees its own 4 bytes; the finals still count in full
        assert (await client.delete(f"/files/{part_b}", headers=TUS)).status_code == 204
        assert (await services.repository.usage(ALICE)).bytes == 18
        await create(client, 4)  # fits again: 18 + 4


async def test_an_expiring_part_fails_every_final_that_names_it(served: Running) -> None:
    client, services = served.client, served.services
    part_a, part_c = await ready_parts(served, b"aa", b"cc")
    late = await create_partial(client, 5, body=b"ll")  # expires before it is finished
    other = await create_partial(client, 3, body=b"o")  # finished later: its final is fine
    first = await create_final(client, part_a, late)
    second = await create_final(client, part_c, late)
    unaffected = await create_final(client, part_a, other)
    await set_expires_at(services, late, datetime.now(UTC) - timedelta(seconds=1))

    assert await services.handler.lifecycle.expire() == 1

    assert (await status(client, late))["state"] == "expired"
    assert await stored(served, late) is None
    for final_id in (first, second):
        shown = await settled(served.app, client, final_id)
        assert shown["state"] == "failed"
        assert shown["failure"] == f"partial upload {late} is expired"
        download = await client.get(f"/files/{final_id}")
        assert download.status_code == 410
        assert reason(download) == f"upload failed: partial upload {late} is expired"
    assert (await status(client, unaffected))["state"] == "receiving"
    assert (await status(client, part_a))["finals"] == [unaffected]  # failed finals left it
    assert (await status(client, part_c))["state"] == "ready"

    assert (await patch(client, other, 1, b"th")).status_code == 204
    assert (await settled(served.app, client, unaffected))["state"] == "ready"
    assert await downloaded(client, unaffected) == b"aaoth"
