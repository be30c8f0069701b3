"""Form uploads (``POST /api/uploads``, multipart/form-data) through the app: files and fields,
the tus limits, and bodies that are malformed or cut off leaving nothing visible."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.file_samples import EXE, PNG, VIDEOS
from tests.tus_http_helpers import Served, count_uploads, serve, stored_files
from upload_service.db.models import UploadRow
from upload_service.errors import BadRequest, ClientGone
from upload_service.settings import Settings
from upload_service.tus.request import TusRequest

pytestmark = pytest.mark.anyio

BOUNDARY = "----form-boundary-7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
SECRET = "an-hs256-secret-of-at-least-32-bytes!"

Part = tuple[str, bytes] | tuple[str, bytes, str, str]  # (name, value) | (name, data, file, type)


def form(parts: Sequence[Part], *, close: bool = True) -> bytes:
    """A multipart/form-data body as browsers and curl -F write it (``close``: with the closing
    boundary; without, the body is cut off after its last part)."""
    out = bytearray()
    for part in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if len(part) == 2:
            name, value = part
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        else:
            name, value, filename, content_type = part
            out += (
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
        out += value + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


async def post(
    client: httpx.AsyncClient,
    body: bytes | AsyncIterator[bytes],
    content_type: str = CONTENT_TYPE,
    **headers: str,
) -> httpx.Response:
    return await client.post(
        "/api/uploads", content=body, headers={"Content-Type": content_type, **headers}
    )


async def live_uploads(served: Served) -> list[str]:
    """States of every upload row that is not terminated (what a client could still see)."""
    async with served.services.engine.connect() as connection:
        rows = await connection.execute(select(UploadRow.state))
    return [state for (state,) in rows if state != "terminated"]


async def nothing_left(served: Served) -> None:
    assert await live_uploads(served) == []
    assert await stored_files(served.services) == []


@pytest.fixture
def sqlite_settings(sqlite_dir: Path) -> Settings:
    return make_settings(sqlite_dir)


async def test_files_and_fields_become_ordinary_uploads(settings: Settings) -> None:
    video = VIDEOS["video/mp4"] + os.urandom(300_000)
    notes = "été notes\n".encode()
    body = form(
        [
            ("title", b"Holiday 2026"),
            ("camera", b"x100"),
            ("video", video, "holiday.mp4", "video/mp4"),
            ("notes", notes, "notes.txt", "application/octet-stream"),
        ]
    )
    async with serve(settings) as served:
        response = await post(served.client, body)
        assert response.status_code == 201, response.text
        uploads = response.json()
        assert [upload["length"] for upload in uploads] == [len(video), len(notes)]
        first, second = uploads
        assert first["state"] == "ready"
        assert first["sha256"] == hashlib.sha256(video).hexdigest()
        assert first["metadata"] == {
            "title": "Holiday 2026",
            "camera": "x100",
            "filename": "holiday.mp4",
            "filetype": "video/mp4",
        }
        # an octet-stream part says nothing of its type: no filetype, the bytes decide
        assert second["metadata"] == {
            "title": "Holiday 2026",
            "camera": "x100",
            "filename": "notes.txt",
        }
        assert second["sha256"] == hashlib.sha256(notes).hexdigest()
        download = await served.client.get(first["download_url"])
        assert download.status_code == 200
        assert download.content == video
        status = await served.client.get(f"/api/uploads/{second['id']}")
        assert status.json()["state"] == "ready"
        assert status.json()["download_url"] == second["download_url"]
        # and the tus side sees the same upload
        head = await served.client.head(f"/files/{first['id']}", headers={"Tus-Resumable": "1.0.0"})
        assert head.headers["Upload-Length"] == head.headers["Upload-Offset"] == str(len(video))


async def test_streams_in_small_chunks_and_skips_empty_file_inputs(
    sqlite_settings: Settings,
) -> None:
    data = os.urandom(1_000_003)
    body = form([("empty", b"", "", "application/octet-stream"), ("f", data, "a.bin", "")])

    async def trickle() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7919):  # parts and boundaries split across chunks
            yield body[start : start + 7919]

    async with serve(sqlite_settings) as served:
        response = await post(served.client, trickle())
        assert response.status_code == 201, response.text
        (upload,) = response.json()
        assert upload["sha256"] == hashlib.sha256(data).hexdigest()
        assert upload["metadata"] == {"filename": "a.bin"}


@pytest.mark.parametrize(
    "cut",
    [
        "in the first file",
        "after the first file",
        "in the second file",
        "before the closing boundary",
    ],
)
async def test_a_truncated_body_is_a_400_and_leaves_nothing(
    sqlite_settings: Settings, cut: str
) -> None:
    first, second = os.urandom(200_000), os.urandom(200_000)
    whole = form([("title", b"t"), ("a", first, "a.bin", "x/y"), ("b", second, "b.bin", "x/y")])
    offsets = {
        "in the first file": whole.index(first) + 100_000,
        "after the first file": whole.index(first) + len(first) + 2,
        "in the second file": whole.index(second) + 1000,
        "before the closing boundary": len(whole) - len(f"--{BOUNDARY}--\r\n"),
    }
    async with serve(sqlite_settings) as served:
        response = await post(served.client, whole[: offsets[cut]])
        assert response.status_code == 400, response.text
        assert "truncated" in response.json()["error"]["message"]
        await nothing_left(served)


@pytest.mark.parametrize(
    ("content_type", "body", "status", "reason"),
    [
        ("multipart/form-data", b"--x\r\n", 400, "boundary"),
        (f"multipart/form-data; boundary={'b' * 71}", b"", 400, "boundary"),
        (
            "multipart/form-data; boundary=other",
            form([("f", b"abc", "a", "x/y")]),
            400,
            "malformed",
        ),
        ("application/json", b"{}", 415, "multipart/form-data"),
        (CONTENT_TYPE, form([("title", b"t")]), 400, "no file"),
        (CONTENT_TYPE, b"garbage before any boundary", 400, "malformed"),
        (CONTENT_TYPE, form([("a b", b"v"), ("f", b"x", "f", "x/y")]), 400, "metadata key"),
        (CONTENT_TYPE, form([("t", b"v"), ("t", b"w"), ("f", b"x", "f", "x/y")]), 400, "twice"),
        (CONTENT_TYPE, form([("f", b"x", "f", "x/y"), ("late", b"v")]), 400, "before the files"),
    ],
)
async def test_malformed_forms_are_a_clear_4xx(
    sqlite_settings: Settings, content_type: str, body: bytes, status: int, reason: str
) -> None:
    async with serve(sqlite_settings) as served:
        response = await post(served.client, body, content_type)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert reason in error["message"]
        assert "\n" not in error["message"]
        await nothing_left(served)


async def test_the_tus_limits_apply(sqlite_dir: Path) -> None:
    settings = make_settings(
        sqlite_dir, max_size=100_000, allowed_types="video/*", max_metadata_keys=3
    )
    mp4 = VIDEOS["video/mp4"]
    async with serve(settings) as served:
        client = served.client
        too_large = await post(client, form([("f", mp4 + bytes(100_000), "big.mp4", "video/mp4")]))
        assert too_large.status_code == 413, too_large.text
        assert "maximum size 100000" in too_large.text
        declared = await post(client, form([("f", PNG, "a.png", "image/png")]))
        assert declared.status_code == 415, declared.text
        sniffed = await post(client, form([("f", EXE, "a.mp4", "video/mp4")]))
        assert sniffed.status_code == 415, sniffed.text
        untyped = await post(client, form([("f", EXE, "a.bin", "application/octet-stream")]))
        assert untyped.status_code == 415, untyped.text
        fields = [("a", b"1"), ("b", b"2"), ("c", b"3")]
        many = await post(client, form([*fields, ("f", mp4, "a.mp4", "video/mp4")]))
        assert many.status_code == 400, many.text
        assert "keys" in many.text  # with the file's own filename and filetype
        more = await post(client, form([*fields, ("d", b"4"), ("f", mp4, "a.mp4", "video/mp4")]))
        assert more.status_code == 400, more.text
        assert "more than 3 text fields" in more.text
        fat: list[Part] = [("a", b"x" * 3000), ("b", b"y" * 3000), ("f", mp4, "a.mp4", "video/mp4")]
        total = await post(client, form(fat))  # each under the 4096-byte cap, not together
        assert total.status_code == 400, total.text
        assert "metadata cap" in total.text
        long = await post(client, form([("a", b"x" * 5000), ("f", mp4, "a.mp4", "video/mp4")]))
        assert long.status_code == 400, long.text
        # the second file is refused: the first, already stored, goes too
        two = form([("f", mp4, "ok.mp4", "video/mp4"), ("g", EXE, "bad.mp4", "video/mp4")])
        assert (await post(client, two)).status_code == 415
        await nothing_left(served)
        ok = await post(client, form([("f", mp4, "ok.mp4", "")]))
        assert ok.status_code == 201, ok.text
        assert ok.json()[0]["state"] == "ready"


def token(sub: str, **claims: object) -> str:
    payload = {"sub": sub, "exp": int(time.time()) + 600, **claims}
    return "Bearer " + jwt.encode(payload, SECRET, algorithm="HS256")


async def test_auth_owners_and_quotas(sqlite_dir: Path) -> None:
    settings = make_settings(sqlite_dir, auth_jwt_secret=SECRET, quota_bytes=1000)
    body = form([("f", b"hello", "h.txt", "text/plain")])
    async with serve(settings) as served:
        client = served.client
        anonymous = await post(client, body)
        assert anonymous.status_code == 401
        created = await post(client, body, Authorization=token("alice"))
        assert created.status_code == 201, created.text
        (upload,) = created.json()
        assert upload["owner"] == "jwt::alice"  # a token without iss
        mine = await client.get(
            f"/api/uploads/{upload['id']}", headers={"Authorization": token("alice")}
        )
        assert mine.status_code == 200
        theirs = await client.get(
            f"/api/uploads/{upload['id']}", headers={"Authorization": token("bob")}
        )
        assert theirs.status_code == 404
        capped = await post(
            client,
            form([("f", bytes(50), "z", "x/y")]),
            Authorization=token("bob", upload_max_size=10),
        )
        assert capped.status_code == 413, capped.text
        over = await post(
            client, form([("f", bytes(2000), "z", "x/y")]), Authorization=token("carol")
        )
        assert over.status_code == 403, over.text
        assert "quota" in over.text
        assert len(await live_uploads(served)) == 1


async def test_a_pre_create_hook_may_refuse_each_file(sqlite_dir: Path) -> None:
    settings = make_settings(sqlite_dir, hook_pre_create="python:tests.hook_functions:reject")
    async with serve(settings) as served:
        response = await post(served.client, form([("f", b"data", "f.bin", "x/y")]))
        assert response.status_code == 402, response.text
        assert "tenant" in response.json()["error"]["message"]
        await nothing_left(served)


@pytest.mark.parametrize("failure", [BadRequest("the form is cut off"), ClientGone()])
async def test_create_whole_terminates_what_a_failing_body_started(
    sqlite_settings: Settings, failure: Exception
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield os.urandom(100_000)
        yield os.urandom(100_000)
        raise failure

    async with serve(sqlite_settings) as served:
        handler = served.services.handler
        with pytest.raises(type(failure)):
            await handler.create_whole(TusRequest(), {"filename": b"x"}, body())
        await nothing_left(served)
        assert await count_uploads(served.services) == 1  # a terminated row (410 for a while)
