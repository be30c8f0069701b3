"""Hooks against a real HTTP receiver on 127.0.0.1 (``tests.hook_receiver``): the pre-create
hook (HTTP and Python), and events written to the outbox and delivered, signed, at least once."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from tests import hook_functions
from tests.conftest import TUS, make_settings
from tests.hook_receiver import Answer, Receiver, receiver
from tests.postgres import empty_tables
from upload_service.app import create_app
from upload_service.hooks import signing
from upload_service.services import Services
from upload_service.settings import Settings
from upload_service.uploads import UploadState

SECRET = "s3cret"
OFFSET = {"Content-Type": "application/offset+octet-stream"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def hook_receiver() -> Iterator[Receiver]:
    with receiver() as state:
        yield state


def hook_settings(data_dir: Path, database_url: str | None = None, **values: object) -> Settings:
    defaults: dict[str, object] = {
        "hook_secret": SECRET,
        "hook_poll_interval": 0.05,
        "hook_retry_delay": 0.1,
        "hook_max_attempts": 3,
        "hook_timeout": 2.0,
    }
    defaults.update(values)
    return make_settings(data_dir, database_url, **defaults)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, settle_heap=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


async def eventually(condition: Callable[[], bool], limit: float = 20.0) -> None:
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - a condition in another thread
            await anyio.sleep(0.02)


async def create(client: httpx.AsyncClient, *, data: bytes | None = None, length: int = 4) -> str:
    headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": f"filename {b64('a.mp4')}"}
    if data is not None:
        headers.update(OFFSET)
    response = await client.post("/files/", headers=headers, content=data or b"")
    assert response.status_code == 201, response.text
    return response.headers["Location"].rsplit("/", 1)[1]


# -- pre-create -----------------------------------------------------------------------------------


async def test_http_pre_create_rejects_with_its_status_and_message(
    sqlite_dir: Path, hook_receiver: Receiver
) -> None:
    hook_receiver.default = Answer.json({"message": "quota exceeded\nsecond line"}, status=429)
    async with running(hook_settings(sqlite_dir, hook_pre_create=hook_receiver.url)) as (
        app,
        client,
    ):
        response = await client.post(
            "/files/", headers={**TUS, "Upload-Length": "4", "Upload-Metadata": "k " + b64("v")}
        )
        assert (response.status_code, response.text) == (429, "quota exceeded\n")
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert await services_of(app).repository.list_by_state(UploadState.RECEIVING) == []
    assert list((sqlite_dir / "files").iterdir()) == []  # nothing was created, not even bytes
    [asked] = hook_receiver.received()
    assert asked.json() == {
        "type": "pre-create",
        "upload": {
            "length": 4,
            "metadata": {"k": "v"},
            "concat": None,
            "parts": [],
            "owner": None,
            "ticket": None,
        },
    }
    assert signing.verify(SECRET, asked.headers["Upload-Signature"], asked.body, time.time())


async def test_http_pre_create_amends_the_metadata_within_the_limits(
    sqlite_dir: Path, hook_receiver: Receiver
) -> None:
    settings = hook_settings(sqlite_dir, hook_pre_create=hook_receiver.url, max_metadata_keys=2)
    async with running(settings) as (_, client):
        hook_receiver.answers = [Answer.json({"metadata": {"filename": "b.mp4", "tenant": "t1"}})]
        upload_id = await create(client)
        head = await client.head(f"/files/{upload_id}", headers=TUS)
        assert head.headers["Upload-Metadata"] == f"filename {b64('b.mp4')},tenant {b64('t1')}"

        hook_receiver.answers = [Answer.json({"metadata": {"a": "1", "b": "2", "c": "3"}})]
        response = await client.post("/files/", headers={**TUS, "Upload-Length": "4"})
        assert response.status_code == 400
        assert response.text.startswith("metadata from the pre-create hook: ")

        hook_receiver.answers = [Answer()]  # 200 without a body: go on unchanged
        plain = await create(client)
        head = await client.head(f"/files/{plain}", headers=TUS)
        assert head.headers["Upload-Metadata"] == f"filename {b64('a.mp4')}"


@pytest.mark.parametrize("failure", ["unreachable", "500", "timeout", "not json"])
async def test_http_pre_create_fails_closed(
    sqlite_dir: Path, hook_receiver: Receiver, failure: str
) -> None:
    url = hook_receiver.url
    if failure == "unreachable":
        url = "http://127.0.0.1:1/hook"  # nothing listens on port 1
    hook_receiver.default = {
        "unreachable": Answer(),
        "500": Answer(500, b"boom"),
        "timeout": Answer(delay=1.0),
        "not json": Answer(200, b"<html>"),
    }[failure]
    async with running(hook_settings(sqlite_dir, hook_pre_create=url, hook_timeout=0.3)) as (
        app,
        client,
    ):
        response = await client.post("/files/", headers={**TUS, "Upload-Length": "4"})
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert response.text.startswith("pre-create hook unavailable: ")
        assert await services_of(app).repository.list_by_state(UploadState.RECEIVING) == []


@pytest.mark.parametrize(
    ("function", "status", "metadata"),
    [
        ("reject", 402, None),
        ("amend", 201, f"filename {b64('a.mp4')},tenant {b64('t1')}"),
        ("amend_async", 201, f"filename {b64('async.mp4')}"),
        ("broken", 503, None),
        ("slow", 503, None),
    ],
)
async def test_python_pre_create(
    sqlite_dir: Path, function: str, status: int, metadata: str | None
) -> None:
    settings = hook_settings(
        sqlite_dir, hook_pre_create=f"python:tests.hook_functions:{function}", hook_timeout=0.3
    )
    async with running(settings) as (_, client):
        response = await client.post(
            "/files/",
            headers={**TUS, "Upload-Length": "4", "Upload-Metadata": f"filename {b64('a.mp4')}"},
        )
        assert response.status_code == status, response.text
        if status == 402:
            assert response.text == "uploads from this tenant are closed\n"
        if metadata is not None:
            head = await client.head(response.headers["Location"], headers=TUS)
            assert head.headers["Upload-Metadata"] == metadata
    if function == "amend":
        assert hook_functions.seen[-1].length == 4
        assert hook_functions.seen[-1].owner is None


async def test_a_hook_that_cannot_be_loaded_stops_start_up(sqlite_dir: Path) -> None:
    settings = hook_settings(sqlite_dir, hook_post="python:tests.hook_functions:missing")
    with pytest.raises(Exception, match=r"UPLOAD_HOOK_POST: tests\.hook_functions has no missing"):
        async with running(settings):
            pass


# -- events ---------------------------------------------------------------------------------------


async def test_each_event_is_delivered_once_signed_and_shown_in_the_api(
    data_dir: Path, database_url: str, hook_receiver: Receiver
) -> None:
    settings = hook_settings(data_dir, database_url, hook_url=hook_receiver.url, expire_after=1)
    async with running(settings) as (app, client):
        finished = await create(client, data=b"data")
        terminated = await create(client)
        assert (await client.delete(f"/files/{terminated}", headers=TUS)).status_code == 204
        expiring = await create(client)
        await anyio.sleep(1.1)
        assert await services_of(app).handler.lifecycle.expire() == 1
        await eventually(lambda: len(hook_receiver.received()) == 6)
        await anyio.sleep(0.3)  # nothing more comes
        deliveries = (await client.get(f"/api/uploads/{finished}/deliveries")).json()
        metrics = (await client.get("/metrics")).text

    requests = hook_receiver.received()
    assert len(requests) == 6
    for request in requests:
        assert signing.verify(
            SECRET, request.headers["Upload-Signature"], request.body, time.time()
        )
        assert not signing.verify("wrong", request.headers["Upload-Signature"], request.body, 0)
        assert request.headers["Upload-Event-Id"] == request.json()["id"]
    events = hook_receiver.events()
    assert len({event["id"] for event in events}) == 6  # each event once
    kinds = sorted((str(event["upload_id"]), str(event["type"])) for event in events)
    assert kinds == sorted(
        [
            (finished, "post-create"),
            (finished, "post-finish"),
            (terminated, "post-create"),
            (terminated, "post-terminate"),
            (expiring, "post-create"),
            (expiring, "post-expire"),
        ]
    )
    [finish] = [event for event in events if event["type"] == "post-finish"]
    assert finish["sha256"] == hashlib.sha256(b"data").hexdigest()
    upload = finish["upload"]
    assert isinstance(upload, dict)
    assert (upload["state"], upload["metadata"]) == ("ready", {"filename": "a.mp4"})

    assert [(d["type"], d["status"], d["attempts"], d["last_error"]) for d in deliveries] == [
        ("post-create", "delivered", 1, None),
        ("post-finish", "delivered", 1, None),
    ]
    assert all(d["delivered_at"] for d in deliveries)
    assert 'upload_hook_deliveries_total{outcome="delivered",type="post-finish"} 1.0' in metrics


async def test_failed_deliveries_are_retried_with_backoff_then_succeed(
    sqlite_dir: Path, hook_receiver: Receiver
) -> None:
    hook_receiver.answers = [Answer(500, b"down for maintenance"), Answer(502)]
    async with running(hook_settings(sqlite_dir, hook_url=hook_receiver.url)) as (_, client):
        upload_id = await create(client)
        await eventually(lambda: len(hook_receiver.received()) == 3)

        async def delivered() -> list[dict[str, object]]:
            response = await client.get(f"/api/uploads/{upload_id}/deliveries")
            result: list[dict[str, object]] = response.json()
            return result

        with anyio.fail_after(10):
            while (await delivered())[0]["status"] != "delivered":  # noqa: ASYNC110
                await anyio.sleep(0.02)
        [delivery] = await delivered()
        metrics = (await client.get("/metrics")).text
    assert (delivery["attempts"], delivery["last_error"]) == (3, None)
    first, second, third = hook_receiver.received()
    assert first.json()["id"] == second.json()["id"] == third.json()["id"]
    # the delays double: at least 0.1 s, then at least 0.2 s (never sooner)
    assert second.started - first.ended >= 0.09
    assert third.started - second.ended >= 0.19
    assert 'upload_hook_deliveries_total{outcome="retried",type="post-create"} 2.0' in metrics


async def test_a_receiver_that_hangs_slows_no_upload_and_the_outbox_catches_up(
    sqlite_dir: Path, hook_receiver: Receiver
) -> None:
    # the receiver hangs past the timeout twice (its attempts time out), then answers again
    hook_receiver.answers = [Answer(delay=3.0), Answer(delay=3.0)]
    settings = hook_settings(sqlite_dir, hook_url=hook_receiver.url, hook_timeout=1.0)
    async with running(settings) as (_, client):
        first = await create(client, data=b"abcd")  # created and finished in one request
        second = await create(client, data=b"efgh")

        async def states() -> list[str]:
            return [
                (await client.get(f"/api/uploads/{upload_id}")).json()["state"]
                for upload_id in (first, second)
            ]

        with anyio.fail_after(10):
            while await states() != ["ready", "ready"]:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        # both uploads are done while the receiver still hangs on the first delivery
        pending = (await client.get(f"/api/uploads/{first}/deliveries")).json()
        assert pending
        assert all(delivery["status"] != "delivered" for delivery in pending)

        async def all_delivered() -> bool:
            for upload_id in (first, second):
                found = (await client.get(f"/api/uploads/{upload_id}/deliveries")).json()
                if not found or any(delivery["status"] != "delivered" for delivery in found):
                    return False
            return True

        with anyio.fail_after(30):
            while not await all_delivered():  # noqa: ASYNC110
                await anyio.sleep(0.05)


async def test_an_event_is_failed_after_the_last_attempt(
    sqlite_dir: Path, hook_receiver: Receiver
) -> None:
    hook_receiver.default = Answer(500, b"broken receiver")
    async with running(hook_settings(sqlite_dir, hook_url=hook_receiver.url)) as (_, client):
        upload_id = await create(client)
        url = f"/api/uploads/{upload_id}/deliveries"
        with anyio.fail_after(10):
            while (await client.get(url)).json()[0]["status"] != "failed":  # noqa: ASYNC110
                await anyio.sleep(0.02)
        await anyio.sleep(0.5)  # and it is never tried again
        [delivery] = (await client.get(url)).json()
        metrics = (await client.get("/metrics")).text
    assert (delivery["attempts"], delivery["last_error"]) == (3, "receiver answered 5xx")
    assert delivery["delivered_at"] is None
    assert len(hook_receiver.received()) == 3
    assert 'upload_hook_deliveries_total{outcome="failed",type="post-create"} 1.0' in metrics


async def test_an_undelivered_event_survives_a_restart(
    data_dir: Path, database_url: str, hook_receiver: Receiver
) -> None:
    # the first process drains only as it starts: the event is written, then it stops
    first = hook_settings(data_dir, database_url, hook_url=hook_receiver.url)
    first = first.replace(hook_poll_interval=3600.0)
    async with running(first) as (app, client):
        drainer = services_of(app).drainer
        assert drainer is not None
        await eventually(lambda: drainer.passes == 1)  # its pass at start found nothing
        upload_id = await create(client)
        await anyio.sleep(0.2)
        assert drainer.passes == 1
    assert hook_receiver.received() == []
    async with running(hook_settings(data_dir, database_url, hook_url=hook_receiver.url)) as (
        _,
        client,
    ):
        await eventually(lambda: len(hook_receiver.received()) == 1)
        await anyio.sleep(0.2)
        [delivery] = (await client.get(f"/api/uploads/{upload_id}/deliveries")).json()
    [event] = hook_receiver.events()
    assert (event["upload_id"], event["type"], delivery["status"]) == (
        upload_id,
        "post-create",
        "delivered",
    )


@pytest.fixture
def empty_postgres(postgres_url: str) -> str:
    empty_tables(postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    return postgres_url


async def test_two_replicas_on_one_postgres_never_deliver_an_event_twice(
    tmp_path: Path, empty_postgres: str, hook_receiver: Receiver
) -> None:
    postgres_url = empty_postgres
    hook_receiver.default = Answer(delay=0.05)  # slow enough for the drainers to overlap
    settings = [
        hook_settings(tmp_path / name, postgres_url, hook_url=hook_receiver.url)
        for name in ("a", "b")
    ]
    for setting in settings:
        setting.storage.data_dir.mkdir()
    async with running(settings[0]) as (_, client), running(settings[1]) as (_, other):
        ids = [await create(client if n % 2 else other) for n in range(20)]
        await eventually(lambda: len(hook_receiver.received()) >= 20)
        await anyio.sleep(0.5)
    requests = hook_receiver.received()
    assert sorted(str(request.json()["upload_id"]) for request in requests) == sorted(ids)
    by_event: dict[object, list[tuple[float, float]]] = {}
    for request in requests:
        by_event.setdefault(request.json()["id"], []).append((request.started, request.ended))
    assert all(len(spans) == 1 for spans in by_event.values())  # once each, never twice


async def test_a_python_post_hook_runs_in_the_thread_pool(sqlite_dir: Path) -> None:
    hook_functions.posted.clear()
    settings = hook_settings(sqlite_dir, hook_post="python:tests.hook_functions:record")
    async with running(settings) as (_, client):
        upload_id = await create(client, data=b"data")
        await eventually(lambda: len(hook_functions.posted) == 2)
    assert [(event.upload_id, event.type.value) for event, _ in hook_functions.posted] == [
        (upload_id, "post-create"),
        (upload_id, "post-finish"),
    ]
    assert all(off_loop for _, off_loop in hook_functions.posted)


async def test_the_readme_copy_on_finish_hook_copies_the_verified_file(
    sqlite_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    monkeypatch.setattr(hook_functions, "SOURCE", sqlite_dir / "files")
    monkeypatch.setattr(hook_functions, "DEST", archive)
    settings = hook_settings(sqlite_dir, hook_post="python:tests.hook_functions:copy_finished")
    async with running(settings) as (_, client):
        upload_id = await create(client, data=b"movie bytes", length=11)
        await eventually(lambda: (archive / upload_id).exists())
        url = f"/api/uploads/{upload_id}/deliveries"
        with anyio.fail_after(10):
            while {d["status"] for d in (await client.get(url)).json()} != {"delivered"}:  # noqa: ASYNC110
                await anyio.sleep(0.02)
    assert (archive / upload_id).read_bytes() == b"movie bytes"
    assert sorted(path.name for path in archive.iterdir()) == [upload_id]


async def test_no_hooks_no_events(sqlite_dir: Path) -> None:
    async with running(make_settings(sqlite_dir)) as (app, client):
        upload_id = await create(client, data=b"data")
        assert (await client.get(f"/api/uploads/{upload_id}/deliveries")).json() == []
        assert services_of(app).drainer is None
        missing = await client.get(f"/api/uploads/{'f' * 32}/deliveries")
        assert missing.status_code == 404
