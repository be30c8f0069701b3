"""Direct uploads over HTTP (docs/direct-uploads.md), straight at the Companion endpoints with
httpx, on an app on SQLite with ``UPLOAD_STORAGE=s3`` against the real moto server: the client
PUTs parts (or form-POSTs a small file) to the presigned URLs the service hands out, and the bytes
never pass through the service; the upload is the issuer's, carries its ticket, goes
``verifying`` → ``ready`` with the sha256 streamed back from the object, and is listed,
downloadable (also by a presigned redirect) and expired like a tus upload. Refusals: a ticket used
up, revoked or expired; another upload's key or id; a part number out of range; a file over the
caps at completion (the multipart upload aborted); a wrong part list; the local store."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import update

from tests import s3 as moto
from tests.conftest import TUS, make_settings
from tests.test_auth import auth_settings, bearer, hs256
from tests.tus_http_helpers import Served, serve, set_expires_at
from upload_service.db.models import TicketRow
from upload_service.settings import Settings

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
PART = 5 * MiB
PREFIX = "direct/"


def direct_settings(data_dir: Path, endpoint: str, bucket: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "storage": "s3",
        "s3_bucket": bucket,
        "s3_endpoint_url": endpoint,
        "s3_prefix": PREFIX,
        "s3_direct_poll_interval": 0.1,
        "hook_post": "python:tests.hook_functions:record",  # hooks on: events are written
    }
    values.update(overrides)
    return auth_settings(data_dir, **values)


@pytest.fixture
async def served(
    aws_credentials: None, sqlite_dir: Path, moto_endpoint: str, bucket: str
) -> AsyncIterator[Served]:
    async with serve(direct_settings(sqlite_dir, moto_endpoint, bucket)) as result:
        yield result


@pytest.fixture
async def s3() -> AsyncIterator[httpx.AsyncClient]:
    """A client for the bucket's presigned URLs (the browser's side)."""
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def data(size: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(size)


async def ticket(client: httpx.AsyncClient, **asked: Any) -> dict[str, Any]:
    response = await client.post("/api/tickets", json=asked, headers=bearer(hs256("alice")))
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def companion(answer: dict[str, Any]) -> str:
    """The ticket's companion endpoint as a path of the test app."""
    endpoint: str = answer["companion_endpoint"]
    return endpoint.removeprefix("http://testserver")


async def start(
    client: httpx.AsyncClient, base: str, filename: str = "clip.mp4", **extra: Any
) -> dict[str, str]:
    response = await client.post(
        f"{base}/s3/multipart",
        json={"filename": filename, "type": "video/mp4", "metadata": {"name": filename}, **extra},
    )
    assert response.status_code == 200, response.text
    started: dict[str, str] = response.json()
    return started


async def put_parts(
    client: httpx.AsyncClient,
    s3: httpx.AsyncClient,
    base: str,
    started: dict[str, str],
    body: bytes,
    size: int = PART,
) -> list[dict[str, object]]:
    """PUT ``body`` in parts of ``size`` to the signed URLs, as the plugin does."""
    parts: list[dict[str, object]] = []
    for index, offset in enumerate(range(0, len(body), size), start=1):
        signed = await sign(client, base, started, index)
        assert signed.status_code == 200, signed.text
        put = await s3.put(signed.json()["url"], content=body[offset : offset + size])
        assert put.status_code == 200, put.text
        parts.append({"PartNumber": index, "ETag": put.headers["ETag"].strip('"')})
    return parts


async def sign(
    client: httpx.AsyncClient,
    base: str,
    started: dict[str, str],
    number: int | str,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """``GET .../s3/multipart/{uploadId}/{number}?key=``: a signed URL for a part."""
    return await client.get(
        f"{base}/s3/multipart/{started['uploadId']}/{number}",
        params={"key": started["key"]},
        headers=headers,
    )


async def complete(
    client: httpx.AsyncClient, base: str, started: dict[str, str], parts: list[dict[str, object]]
) -> httpx.Response:
    return await client.post(
        f"{base}/s3/multipart/{started['uploadId']}/complete",
        params={"key": started["key"]},
        json={"parts": parts},
    )


async def settled(
    client: httpx.AsyncClient, upload_id: str, headers: dict[str, str]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = (
            await client.get(f"/api/uploads/{upload_id}", headers=headers)
        ).json()
        if body["state"] in ("ready", "failed") or time.monotonic() > deadline:
            return body
        await anyio.sleep(0.05)


def stored(endpoint: str, bucket: str, key: str) -> bytes:
    body: bytes = moto.admin(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


async def in_bucket(endpoint: str, bucket: str) -> tuple[list[str], list[tuple[str, str]]]:
    keys = await anyio.to_thread.run_sync(moto.object_keys, endpoint, bucket)
    uploads = await anyio.to_thread.run_sync(moto.multipart_uploads, endpoint, bucket)
    return keys, uploads


async def test_a_multipart_upload_on_a_ticket_goes_straight_to_the_bucket_and_becomes_ready(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    answer = await ticket(client, metadata={"tenant": "t1"})
    base = companion(answer)
    body = data(2 * PART + 123)
    started = await start(client, base)
    assert started["key"].startswith(PREFIX)
    upload_id = started["key"].removeprefix(PREFIX)
    auth = bearer(answer["ticket"])
    receiving = (await client.get(f"/api/uploads/{upload_id}", headers=auth)).json()
    assert (receiving["state"], receiving["direct"], receiving["offset"]) == ("receiving", True, 0)
    parts = await put_parts(client, s3, base, started, body)
    listed = await client.get(
        f"{base}/s3/multipart/{started['uploadId']}", params={"key": started["key"]}
    )
    assert [(part["PartNumber"], part["Size"]) for part in listed.json()] == [
        (1, PART),
        (2, PART),
        (3, 123),
    ]
    done = await complete(client, base, started, parts)
    assert done.status_code == 200, done.text
    assert done.json()["location"] == f"http://testserver/files/{upload_id}"
    assert done.json()["key"] == started["key"]
    again = await complete(client, base, started, parts)  # a retried complete: the same
    assert again.status_code == 200
    assert again.json()["location"] == done.json()["location"]

    status = await settled(client, upload_id, auth)
    assert status["state"] == "ready"
    assert status["sha256"] == hashlib.sha256(body).hexdigest()
    assert (status["length"], status["offset"]) == (len(body), len(body))
    assert status["owner"] == "jwt:https%3A//issuer.test:alice"
    assert status["ticket"] == answer["id"]
    assert status["metadata"] == {"filename": "clip.mp4", "filetype": "video/mp4", "tenant": "t1"}
    assert await anyio.to_thread.run_sync(stored, moto_endpoint, bucket, started["key"]) == body
    keys, uploads = await in_bucket(moto_endpoint, bucket)
    assert (keys, uploads) == ([started["key"]], [])
    # served like any upload: downloaded through the service, listed for its issuer
    download = await client.get(f"/files/{upload_id}", headers=auth)
    assert download.content == body
    listing = await client.get("/api/uploads", headers=bearer(hs256("alice")))
    assert [upload["id"] for upload in listing.json()["uploads"]] == [upload_id]
    assert served.services.outbox is not None
    events = await served.services.outbox.events_of(upload_id)
    assert [event.type.value for event in events] == ["post-create", "post-finish"]
    for event in events:  # the hooks hear of the ticket, and that the upload was direct
        assert (event.upload["ticket"], event.upload["direct"]) == (answer["id"], True)
    assert events[-1].upload["sha256"] == hashlib.sha256(body).hexdigest()
    # a tus client cannot append to it
    patched = await client.patch(
        f"/files/{upload_id}",
        headers={
            **TUS,
            **auth,
            "Upload-Offset": str(len(body)),
            "Content-Type": "application/offset+octet-stream",
        },
        content=b"x",
    )
    assert patched.status_code in (403, 413)


async def test_refusals_on_the_companion_endpoints(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    first = await ticket(client)
    base = companion(first)
    started = await start(client, base)
    # the ticket is used up: no second upload
    reuse = await client.post(f"{base}/s3/multipart", json={"filename": "b.mp4"})
    assert reuse.status_code == 403
    assert "has created every upload it may" in reuse.json()["error"]["message"]
    # another ticket's upload, a key and id that do not belong together, a foreign key
    second = await ticket(client)
    other = companion(second)
    theirs = await sign(client, other, started, 1)
    assert theirs.status_code == 404
    wrong_id = await client.get(f"{base}/s3/multipart/nope/1", params={"key": started["key"]})
    assert wrong_id.status_code == 404
    foreign = await client.get(
        f"{base}/s3/multipart/{started['uploadId']}/1", params={"key": "elsewhere/x"}
    )
    assert foreign.status_code == 404
    missing_key = await client.get(f"{base}/s3/multipart/{started['uploadId']}/1")
    assert missing_key.status_code == 400
    # part numbers out of range
    for number in ("0", "10001", "abc", "-1"):
        response = await sign(client, base, started, number)
        assert response.status_code == 400, number
        assert "part number must be between 1 and 10000" in response.json()["error"]["message"]
    # a part list that is not what was uploaded: 400, and the upload still takes parts
    parts = await put_parts(client, s3, base, started, data(PART + 10))
    wrong = [{"PartNumber": 1, "ETag": "0" * 32}, parts[1]]
    refused = await complete(client, base, started, wrong)
    assert refused.status_code == 400
    assert "part 1 was not uploaded with that ETag" in refused.json()["error"]["message"]
    unordered = await complete(client, base, started, [parts[1], parts[0]])
    assert unordered.status_code == 400
    assert (await complete(client, base, started, [])).status_code == 400
    assert (await complete(client, base, started, parts)).status_code == 200
    # a completed upload takes no more parts
    late = await sign(client, base, started, 3)
    assert late.status_code == 409
    # revoked and expired tickets, a made-up one
    await client.delete(f"/api/tickets/{second['id']}", headers=bearer(hs256("alice")))
    revoked = await client.post(f"{other}/s3/multipart", json={"filename": "c.mp4"})
    assert revoked.status_code == 401
    assert "upload ticket was revoked" in revoked.json()["error"]["message"]
    third = await ticket(client)
    async with served.services.engine.begin() as connection:
        await connection.execute(
            update(TicketRow)
            .where(TicketRow.id == third["id"])
            .values(expires_at=served.services.handler.clock() - timedelta(seconds=1))
        )
    expired = await client.post(f"{companion(third)}/s3/multipart", json={"filename": "d.mp4"})
    assert expired.status_code == 401
    assert "upload ticket has expired" in expired.json()["error"]["message"]
    made_up = await client.post("/companion/ut_nonsense/s3/multipart", json={})
    assert made_up.status_code == 401
    # the endpoints under the service's root take the usual credentials, and only them
    anonymous = await client.post("/s3/multipart", json={"filename": "e.mp4"})
    assert anonymous.status_code == 401
    with_token = await client.post(
        "/s3/multipart", json={"filename": "e.mp4"}, headers=bearer(hs256("bob"))
    )
    assert with_token.status_code == 200
    bobs = with_token.json()
    alices = await sign(client, "", bobs, 1, bearer(hs256("alice")))
    assert alices.status_code == 404


async def test_a_file_over_the_caps_is_refused_at_completion_and_its_parts_deleted(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    answer = await ticket(client, max_size=PART + 100)
    base = companion(answer)
    started = await start(client, base)
    upload_id = started["key"].removeprefix(PREFIX)
    parts = await put_parts(client, s3, base, started, data(PART + 101))
    refused = await complete(client, base, started, parts)
    assert refused.status_code == 413
    assert "more than the maximum size" in refused.json()["error"]["message"]
    status = (
        await client.get(f"/api/uploads/{upload_id}", headers=bearer(answer["ticket"]))
    ).json()
    assert status["state"] == "failed"
    assert "more than the maximum size" in status["failure"]
    assert await in_bucket(moto_endpoint, bucket) == ([], [])  # aborted: nothing billable
    # the refused upload gave its one use back: the end user may try a file that fits
    shown = await client.get(f"/api/tickets/{answer['id']}", headers=bearer(hs256("alice")))
    assert shown.json()["used"] == 0
    # a part that would start past the cap is refused before it is signed, and the upload
    # with it (the file is too large): its parts are deleted, the use given back again
    started = await start(client, base)
    await put_parts(client, s3, base, started, data(PART))
    beyond = await sign(client, base, started, 3)
    assert beyond.status_code == 413
    assert "would start past the upload's maximum size" in beyond.json()["error"]["message"]
    assert (await sign(client, base, started, 1)).status_code == 410
    assert await in_bucket(moto_endpoint, bucket) == ([], [])
    shown = await client.get(f"/api/tickets/{answer['id']}", headers=bearer(hs256("alice")))
    assert shown.json()["used"] == 0
    # a declared size is held to as well
    declared = await client.post(
        "/s3/multipart",
        json={"filename": "f.mp4", "size": 10},
        headers=bearer(hs256("alice")),
    )
    assert declared.status_code == 200
    started = declared.json()
    signed = await sign(client, "", started, 2, bearer(hs256("alice")))
    assert signed.status_code == 413
    too_big = await client.post(
        "/s3/multipart", json={"size": 6 * 1024**4}, headers=bearer(hs256("alice"))
    )
    assert too_big.status_code == 413


async def test_a_small_file_goes_by_a_form_post_policy_and_the_service_finds_it(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    answer = await ticket(client, allowed_types=["video/*"])
    base = companion(answer)
    refused = await client.get(
        f"{base}/s3/params", params={"filename": "a.png", "type": "image/png"}
    )
    assert refused.status_code == 415
    body = data(300_000)
    policy = await client.get(
        f"{base}/s3/params",
        params={"filename": "small.mp4", "type": "video/mp4", "metadata[caption]": "hi"},
    )
    assert policy.status_code == 200, policy.text
    answered = policy.json()
    assert answered["method"] == "POST"
    assert answered["url"].endswith("/")
    key = answered["fields"]["key"]
    upload_id = key.removeprefix(PREFIX)
    posted = await s3.post(
        answered["url"], data=answered["fields"], files={"file": ("small.mp4", body, "video/mp4")}
    )
    assert posted.status_code in (200, 201, 204), posted.text
    status = await settled(client, upload_id, bearer(answer["ticket"]))
    assert status["state"] == "ready"
    assert status["sha256"] == hashlib.sha256(body).hexdigest()
    assert status["metadata"]["caption"] == "hi"
    assert status["direct"] is True
    assert await anyio.to_thread.run_sync(stored, moto_endpoint, bucket, key) == body


async def test_an_abandoned_direct_upload_is_aborted_on_expiry(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    headers = bearer(hs256("alice"))
    response = await client.post("/s3/multipart", json={"filename": "g.mp4"}, headers=headers)
    started = response.json()
    signed = await sign(client, "", started, 1, headers)
    assert (await s3.put(signed.json()["url"], content=data(1000))).status_code == 200
    assert len((await in_bucket(moto_endpoint, bucket))[1]) == 1
    upload_id = started["key"].removeprefix(PREFIX)
    past = served.services.handler.clock() - timedelta(seconds=1)
    await set_expires_at(served.services, upload_id, past)
    assert await served.services.handler.lifecycle.expire() == 1
    assert await in_bucket(moto_endpoint, bucket) == ([], [])
    gone = await sign(client, "", started, 2, headers)
    assert gone.status_code == 410


async def test_abort_terminates_the_upload_and_deletes_its_parts(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    answer = await ticket(client)
    base = companion(answer)
    started = await start(client, base)
    await put_parts(client, s3, base, started, data(1000))
    aborted = await client.delete(
        f"{base}/s3/multipart/{started['uploadId']}", params={"key": started["key"]}
    )
    assert aborted.status_code == 204
    assert await in_bucket(moto_endpoint, bucket) == ([], [])
    upload_id = started["key"].removeprefix(PREFIX)
    status = await client.get(f"/api/uploads/{upload_id}", headers=bearer(answer["ticket"]))
    assert status.json()["state"] == "terminated"


async def test_a_ready_upload_downloads_by_a_presigned_redirect_when_enabled(
    aws_credentials: None,
    sqlite_dir: Path,
    moto_endpoint: str,
    bucket: str,
    s3: httpx.AsyncClient,
) -> None:
    settings = direct_settings(sqlite_dir, moto_endpoint, bucket, s3_download_redirect=True)
    async with serve(settings) as served:
        client = served.client
        headers = bearer(hs256("alice"))
        body = data(1234)
        created = await client.post(
            "/files/",
            headers={
                **TUS,
                **headers,
                "Upload-Length": str(len(body)),
                "Content-Type": "application/offset+octet-stream",
                "Upload-Metadata": "filename bW92aWUubXA0",  # movie.mp4
            },
            content=body,
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        assert (await settled(client, upload_id, headers))["state"] == "ready"
        redirect = await client.get(f"/files/{upload_id}", headers=headers)
        assert redirect.status_code == 302
        location = redirect.headers["Location"]
        assert location.startswith(moto_endpoint)
        fetched = await s3.get(location)
        assert fetched.content == body
        assert 'filename="movie.mp4"' in fetched.headers["Content-Disposition"]
        other = await client.get(f"/files/{upload_id}", headers=bearer(hs256("bob")))
        assert other.status_code == 404  # the redirect is only for who may download


async def test_the_local_store_takes_no_direct_uploads(sqlite_dir: Path) -> None:
    async with serve(make_settings(sqlite_dir)) as served:
        response = await served.client.post("/s3/multipart", json={"filename": "a.mp4"})
        assert response.status_code == 501
        assert "UPLOAD_STORAGE=s3" in response.json()["error"]["message"]


async def test_an_upload_whose_sha256_cannot_be_computed_fails_never_ready(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    client = served.client
    answer = await ticket(client)
    base = companion(answer)
    started = await start(client, base)
    upload_id = started["key"].removeprefix(PREFIX)
    parts = await put_parts(client, s3, base, started, data(1000))
    # completed in the bucket, then its object lost before the service reads it back
    await anyio.to_thread.run_sync(
        lambda: moto.admin(moto_endpoint).complete_multipart_upload(
            Bucket=bucket,
            Key=started["key"],
            UploadId=started["uploadId"],
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
        )
    )
    repository = served.services.repository
    now = served.services.handler.clock()
    await repository.declare_length(upload_id, 1000, now)
    await repository.advance(upload_id, expected=0, offset=1000, now=now, expires_at=None)
    await repository.complete(upload_id, now)
    await anyio.to_thread.run_sync(
        lambda: moto.admin(moto_endpoint).delete_object(Bucket=bucket, Key=started["key"])
    )
    await served.services.handler.lifecycle.verify(upload_id)
    status = (
        await client.get(f"/api/uploads/{upload_id}", headers=bearer(answer["ticket"]))
    ).json()
    assert status["state"] == "failed"
    assert status["failure"].startswith("the sha256 could not be computed")
    assert status["sha256"] is None


async def test_a_client_asking_for_parts_keeps_its_upload_alive_and_a_post_expires_early(
    served: Served,
) -> None:
    client = served.client
    answer = await ticket(client, uploads=2)
    base = companion(answer)
    auth = bearer(answer["ticket"])
    started = await start(client, base)
    upload_id = started["key"].removeprefix(PREFIX)
    now = served.services.handler.clock()
    # a tus client cannot append to a direct upload
    patched = await client.patch(
        f"/files/{upload_id}",
        headers={
            **TUS,
            **auth,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        content=b"x",
    )
    assert patched.status_code == 403
    assert "straight to the bucket" in patched.text
    # close to its expiry (a long upload): the next part's URL moves the expiry on
    await set_expires_at(served.services, upload_id, now + timedelta(minutes=1))
    assert (await sign(client, base, started, 1)).status_code == 200
    upload = await served.services.repository.get(upload_id)
    assert upload is not None
    assert upload.expires_at is not None
    assert upload.expires_at > now + timedelta(days=3)  # UPLOAD_EXPIRE_AFTER is 7 days
    # far from it: no write for each part
    before = upload.updated_at
    assert (await sign(client, base, started, 2)).status_code == 200
    again = await served.services.repository.get(upload_id)
    assert again is not None
    assert again.updated_at == before
    # a form-POST upload expires soon after its policy: nothing can arrive later
    policy = await client.get(f"{base}/s3/params", params={"filename": "a.mp4"})
    assert policy.status_code == 200
    posted = await served.services.repository.get(
        policy.json()["fields"]["key"].removeprefix(PREFIX)
    )
    assert posted is not None
    assert posted.expires_at is not None
    assert posted.expires_at - posted.created_at == timedelta(seconds=900 + 300)


async def test_a_complete_retried_after_a_kill_between_the_bucket_and_the_row_finishes_it(
    served: Served, s3: httpx.AsyncClient, moto_endpoint: str, bucket: str
) -> None:
    """Killed after CompleteMultipartUpload, before the row moved: the parts are gone and the
    object is there; the client's retried ``complete`` finishes the row from the object."""
    client = served.client
    answer = await ticket(client)
    base = companion(answer)
    started = await start(client, base)
    body = data(PART + 7)
    parts = await put_parts(client, s3, base, started, body)
    await anyio.to_thread.run_sync(
        lambda: moto.admin(moto_endpoint).complete_multipart_upload(
            Bucket=bucket,
            Key=started["key"],
            UploadId=started["uploadId"],
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
        )
    )
    done = await complete(client, base, started, parts)
    assert done.status_code == 200, done.text
    status = await settled(client, done.json()["id"], bearer(answer["ticket"]))
    assert status["state"] == "ready"
    assert status["sha256"] == hashlib.sha256(body).hexdigest()
    # aborted instead (nothing in the bucket): a 409, and the upload stays as it was
    second = await ticket(client)
    other = companion(second)
    gone = await start(client, other)
    await anyio.to_thread.run_sync(
        lambda: moto.admin(moto_endpoint).abort_multipart_upload(
            Bucket=bucket, Key=gone["key"], UploadId=gone["uploadId"]
        )
    )
    refused = await complete(client, other, gone, [{"PartNumber": 1, "ETag": "x"}])
    assert refused.status_code == 409
    assert "parts are gone" in refused.json()["error"]["message"]
