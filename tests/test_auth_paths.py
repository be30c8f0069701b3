"""Owners, quotas and caps on every path that stores or reveals bytes, not only the common one.

Each test is a way past a rule that was seen on a service before the rule held at its root: a JWT
whose ``sub`` is an API key's owner name, deferred lengths and concatenations around the byte
quota, finals around the upload count and a token's size cap, and a partial upload of a type the
token does not allow served back as a download.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import jwt
import pytest

from tests import hook_functions
from tests.conftest import TUS, make_settings
from tests.test_auth import (  # noqa: F401 (fixtures)
    API_KEY,
    SECRET,
    auth_settings,
    bearer,
    data_dir,
    hs256,
    served,
    sqlite_url,
)
from tests.tus_http_helpers import OFFSET_CT, Served, serve
from upload_service.auth.apikey import hash_key

pytestmark = pytest.mark.anyio

ALICE = "jwt:https%3A//issuer.test:alice"


def header_names(headers: dict[str, str]) -> dict[str, str]:
    """Keyword arguments as header names (``Upload_Length``: ``Upload-Length``)."""
    return {name.replace("_", "-"): value for name, value in headers.items()}


def plain_token(sub: str = "alice", **claims: object) -> str:
    """An HS256 token of ``SECRET`` with no iss and no aud (for a service that pins neither)."""
    return str(jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET))


async def create(
    client: httpx.AsyncClient, token: str, length: int | None, **headers: str
) -> httpx.Response:
    sizing = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    return await client.post(
        "/files/", headers={**TUS, **bearer(token), **sizing, **header_names(headers)}
    )


async def created(client: httpx.AsyncClient, token: str, length: int | None, **headers: str) -> str:
    response = await create(client, token, length, **headers)
    assert response.status_code == 201, response.text
    return str(response.headers["Location"]).rsplit("/", 1)[1]


async def create_final(client: httpx.AsyncClient, token: str, parts: list[str]) -> httpx.Response:
    concat = "final;" + " ".join(f"/files/{part}" for part in parts)
    return await client.post("/files/", headers={**TUS, **bearer(token), "Upload-Concat": concat})


async def created_final(client: httpx.AsyncClient, token: str, parts: list[str]) -> str:
    response = await create_final(client, token, parts)
    assert response.status_code == 201, response.text
    return str(response.headers["Location"]).rsplit("/", 1)[1]


async def patch(
    client: httpx.AsyncClient,
    upload_id: str,
    token: str,
    offset: int,
    data: bytes | AsyncIterator[bytes] = b"",
    **headers: str,
) -> httpx.Response:
    return await client.patch(
        f"/files/{upload_id}",
        headers={
            **TUS,
            **bearer(token),
            "Upload-Offset": str(offset),
            "Content-Type": OFFSET_CT,
            **header_names(headers),
        },
        content=data,
    )


async def chunked(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    """A body without Content-Length, in pieces."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def state_of(app: Served, upload_id: str) -> tuple[str, str | None]:
    """The upload's state once background work (assembly, verification) settled."""
    state = "unknown"
    for _ in range(500):
        upload = await app.services.repository.get(upload_id)
        assert upload is not None
        state = upload.state.value
        if state not in ("receiving", "verifying"):
            return state, upload.failure
        await anyio.sleep(0.02)
    raise AssertionError(f"upload {upload_id} is still {state}")


async def usage(app: Served, owner: str = ALICE) -> int:
    return (await app.services.repository.usage(owner)).bytes


# -- 1. one owner namespace per kind of credential ------------------------------------------------


async def test_a_jwt_whose_sub_is_an_api_keys_owner_reaches_none_of_its_uploads(
    data_dir: Path,  # noqa: F811
) -> None:
    settings = auth_settings(
        data_dir,
        auth_api_keys=f"keya:{hash_key(API_KEY)}",
        hook_pre_create="python:tests.hook_functions:amend",
        hook_post="python:tests.hook_functions:record",
        hook_poll_interval=0.05,
    )
    async with served(settings) as app:
        client = app.client
        upload_id = await created(client, API_KEY, 3)
        assert (await patch(client, upload_id, API_KEY, 0, b"key")).status_code == 204
        assert hook_functions.seen[-1].owner == "key:keya"
        impostor = bearer(hs256("keya"))
        requests = [
            client.get(f"/files/{upload_id}", headers=impostor),
            client.head(f"/files/{upload_id}", headers={**TUS, **impostor}),
            client.delete(f"/files/{upload_id}", headers={**TUS, **impostor}),
            client.get(f"/api/uploads/{upload_id}", headers=impostor),
            client.get(f"/api/uploads/{upload_id}/deliveries", headers=impostor),
        ]
        for request in requests:
            response = await request
            assert response.status_code == 404, (response.request.method, response.text)
        listed = await client.get("/api/uploads", headers=impostor)
        assert listed.json()["uploads"] == []
        mine = await client.get(f"/api/uploads/{upload_id}", headers=bearer(API_KEY))
        assert mine.json()["owner"] == "key:keya"
        assert (await client.get(f"/files/{upload_id}", headers=bearer(API_KEY))).content == b"key"

        theirs = await created(client, hs256("keya"), 1)
        shown = await client.get(f"/api/uploads/{theirs}", headers=impostor)
        assert shown.json()["owner"] == "jwt:https%3A//issuer.test:keya"
        assert hook_functions.seen[-1].owner == "jwt:https%3A//issuer.test:keya"
        for _ in range(250):
            if any(event.upload_id == theirs for event, _ in hook_functions.posted):
                break
            await anyio.sleep(0.02)
        owners = {
            event.upload_id: event.upload["owner"]
            for event, _ in hook_functions.posted
            if event.upload_id in (upload_id, theirs)
        }
        assert owners == {upload_id: "key:keya", theirs: "jwt:https%3A//issuer.test:keya"}


async def test_the_issuer_is_part_of_a_jwt_owner(data_dir: Path) -> None:  # noqa: F811
    # no issuer pinned: tokens of two issuers signed with the one key are two owners
    settings = auth_settings(data_dir, auth_jwt_issuer=None, auth_jwt_audience=None)
    async with served(settings) as app:
        client = app.client
        upload_id = await created(client, plain_token(iss="https://a.test"), 1)
        other = bearer(plain_token(iss="https://b.test"))
        assert (
            await client.head(f"/files/{upload_id}", headers={**TUS, **other})
        ).status_code == 404
        no_iss = await created(client, plain_token(), 1)
        shown = await client.get(f"/api/uploads/{no_iss}", headers=bearer(plain_token()))
        assert shown.json()["owner"] == "jwt::alice"
        # an issuer with a colon never meets another split of the same characters
        colons = bearer(plain_token("b:alice", iss="a"))
        assert (await client.head(f"/files/{no_iss}", headers={**TUS, **colons})).status_code == 404
        colons = bearer(plain_token("x", iss=":"))
        assert (await client.head(f"/files/{no_iss}", headers={**TUS, **colons})).status_code == 404


# -- 2. quotas and caps where bytes are written ---------------------------------------------------


async def test_bytes_of_deferred_uploads_count_against_the_byte_quota_as_they_arrive(
    data_dir: Path,  # noqa: F811
) -> None:
    async with served(auth_settings(data_dir, quota_bytes=1000)) as app:
        client, token = app.client, hs256()
        first = await created(client, token, None)
        assert (await patch(client, first, token, 0, b"a" * 600)).status_code == 204
        second = await created(client, token, None)
        # a declared body that would pass the quota is refused before a byte is written
        declared = await patch(client, second, token, 0, b"b" * 600)
        assert declared.status_code == 403, declared.text
        assert "quota exceeded" in declared.text
        assert (await app.services.repository.get(second)).offset == 0  # type: ignore[union-attr]
        # a chunked one is cut where the quota ends, and refused
        cut = await patch(client, second, token, 0, chunked(b"b" * 600))
        assert cut.status_code == 403, cut.text
        assert "quota exceeded" in cut.text
        assert await usage(app) == 1000
        head = await client.head(f"/files/{second}", headers={**TUS, **bearer(token)})
        assert head.headers["Upload-Offset"] == "400"
        # nothing is left: a new upload of unknown length is refused; declaring a length within
        # what is stored is fine
        refused = await create(client, token, None)
        assert refused.status_code == 403
        assert "none left" in refused.text
        assert (await patch(client, second, token, 400, Upload_Length="400")).status_code == 204
        assert await usage(app) == 1000


async def test_a_final_of_deferred_parts_is_checked_against_the_quota_when_assembled(
    data_dir: Path,  # noqa: F811
) -> None:
    async with served(auth_settings(data_dir, quota_bytes=1000)) as app:
        client, token = app.client, hs256()
        parts = [await created(client, token, None, Upload_Concat="partial") for _ in range(2)]
        final = await created_final(client, token, parts)
        for part in parts:
            response = await patch(client, part, token, 0, b"p" * 400, Upload_Length="400")
            assert response.status_code == 204, response.text
        state, failure = await state_of(app, final)
        assert state == "failed"
        assert "quota exceeded" in str(failure)
        assert await usage(app) == 800  # the parts; the failed final holds nothing


async def test_finals_count_as_unfinished_uploads(data_dir: Path) -> None:  # noqa: F811
    async with served(auth_settings(data_dir, quota_uploads=2)) as app:
        client, token = app.client, hs256()
        parts = [await created(client, token, None, Upload_Concat="partial") for _ in range(2)]
        final = await create_final(client, token, parts)
        assert final.status_code == 403, final.text
        assert "unfinished uploads" in final.text


async def test_a_tokens_size_cap_holds_for_deferred_lengths_and_finals(
    data_dir: Path,  # noqa: F811
) -> None:
    async with served(auth_settings(data_dir)) as app:
        client = app.client
        capped, uncapped = hs256(upload_max_size=100), hs256()
        deferred = await created(client, capped, None)
        too_long = await patch(client, deferred, capped, 0, chunked(b"x" * 150))
        assert too_long.status_code == 413, too_long.text
        assert (await app.services.repository.get(deferred)).offset == 100  # type: ignore[union-attr]
        # the creator's cap holds for another token of the same owner too
        declared = await patch(client, deferred, uncapped, 100, Upload_Length="150")
        assert declared.status_code == 413, declared.text
        more = await patch(client, deferred, uncapped, 100, b"y")
        assert more.status_code == 413, more.text

        parts = [await created(client, capped, None, Upload_Concat="partial") for _ in range(2)]
        final = await created_final(client, capped, parts)
        for part in parts:
            response = await patch(client, part, capped, 0, b"p" * 60, Upload_Length="60")
            assert response.status_code == 204, response.text
        state, failure = await state_of(app, final)
        assert (state, failure) == ("failed", "assembled length 120 exceeds the maximum size 100")


@pytest.mark.every_database  # quota checks are serialised per owner in the database
async def test_racing_patches_of_one_owner_never_pass_the_quota(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, auth_jwt_secret=SECRET, quota_bytes=1000)
    token = plain_token()
    async with serve(settings) as app:
        client = app.client
        uploads = [await created(client, token, None) for _ in range(2)]
        started = anyio.Event()
        waiting = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal waiting
            yield b"r" * 100
            waiting += 1
            if waiting == 2:
                started.set()
            await started.wait()  # both have found 1000 bytes left before either commits
            yield b"r" * 500

        statuses: list[int] = []

        async def send(upload_id: str) -> None:
            statuses.append((await patch(client, upload_id, token, 0, body())).status_code)

        async with anyio.create_task_group() as tasks:
            for upload_id in uploads:
                tasks.start_soon(send, upload_id)
        assert sorted(statuses) == [204, 403]
        assert await usage(app, "jwt::alice") == 600


# -- 3. content rules and partial uploads ---------------------------------------------------------


async def test_a_partial_upload_is_never_served_as_a_download(data_dir: Path) -> None:  # noqa: F811
    async with served(auth_settings(data_dir)) as app:
        client, token = app.client, hs256(upload_types=["video/*"])
        html = b"<!DOCTYPE html><html><script>alert(1)</script></html>"
        part = await created(client, token, len(html), Upload_Concat="partial")
        assert (await patch(client, part, token, 0, html)).status_code == 204
        assert await state_of(app, part) == ("ready", None)
        download = await client.get(f"/files/{part}", headers=bearer(token))
        assert download.status_code == 403, download.text
        assert "partial upload" in download.text
        shown = await client.get(f"/api/uploads/{part}", headers=bearer(token))
        assert shown.json()["download_url"] is None  # no signed link for it either
        # a final made of it is checked on its first bytes
        final = await create_final(client, token, [part])
        assert final.status_code == 415, final.text
