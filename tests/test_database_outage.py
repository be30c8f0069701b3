"""The database goes away and comes back, for real, without disturbing the shared server: the
app reaches PostgreSQL through a small TCP proxy on 127.0.0.1 that the test cuts (every
connection dropped, new ones refused) and restores; SQLite is locked by another connection. Every
route answers 503 with ``Retry-After`` (never a 500), /readyz says unavailable, a PATCH whose
commit fails commits nothing past the durable bytes, and the service recovers without a restart:
the upload resumes and ends with the right sha256."""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.integrity_helpers import sha256_when_ready
from tests.postgres import (
    migrated_database,
)
from tests.proxy import CuttableProxy
from tests.tus_http_helpers import create, head, patch, serve
from upload_service.db.session import database_error
from upload_service.errors import StorageFull, Unavailable
from upload_service.settings import Settings

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
GUARD = 60.0  # seconds; a hang is a failure, not a measurement


@pytest.fixture
def outage_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this test's own: its direct URL."""
    with migrated_database("outage") as url:
        yield url


@contextlib.asynccontextmanager
async def proxied(url: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    parts = urlsplit(url)
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        await proxy.aclose()


async def _chunks(data: bytes, size: int = 64 * KiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _until_ok(client: httpx.AsyncClient, method: str, url: str) -> httpx.Response:
    """Retry as a client told ``Retry-After`` would (faster: the test has no time to lose)."""
    with anyio.fail_after(GUARD):
        while True:
            response = await client.request(method, url, headers=TUS)
            if response.status_code != 503:
                return response
            assert response.headers["Retry-After"].isdigit()
            await anyio.sleep(0.05)


def _assert_unavailable(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.text)
    assert response.headers["Retry-After"].isdigit(), what


async def _every_route_is_503(client: httpx.AsyncClient, ready_id: str, open_id: str) -> None:
    tus = f"/files/{open_id}"
    body = {**TUS, "Upload-Offset": "5", "Content-Type": "application/offset+octet-stream"}
    answers = {
        "HEAD": await client.head(tus, headers=TUS),
        "PATCH": await client.patch(tus, headers=body, content=b"567"),
        "POST": await client.post("/files/", headers={**TUS, "Upload-Length": "3"}),
        "DELETE": await client.delete(tus, headers=TUS),
        "GET download": await client.get(f"/files/{ready_id}"),
        "GET api": await client.get(f"/api/uploads/{open_id}"),
    }
    for what, answer in answers.items():
        _assert_unavailable(answer, what)
        if what != "GET api":
            assert answer.headers["Tus-Resumable"] == "1.0.0", what
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["detail"].startswith("database unavailable: ")


async def test_postgres_cut_off_answers_503_everywhere_and_recovers_without_a_restart(
    outage_database: str, tmp_path: Path
) -> None:
    async with (
        proxied(outage_database) as (proxy, url),
        serve(make_settings(tmp_path / "data", url)) as served,
    ):
        client = served.client
        ready_id = await create(client, 3)
        assert (await patch(client, ready_id, 0, b"abc")).status_code == 204
        open_id = await create(client, 10)
        assert (await patch(client, open_id, 0, b"01234")).status_code == 204
        await sha256_when_ready(client, ready_id, GUARD)

        await proxy.cut()
        await _every_route_is_503(client, ready_id, open_id)
        await proxy.restore()

        answered = await _until_ok(client, "HEAD", f"/files/{open_id}")
        assert answered.status_code == 200
        assert answered.headers["Upload-Offset"] == "5"  # nothing lost, nothing invented
        assert (await client.get("/readyz")).status_code == 200
        resumed = await patch(client, open_id, 5, b"56789")
        assert resumed.status_code == 204, resumed.text
        assert (
            await sha256_when_ready(client, open_id, GUARD)
            == hashlib.sha256(b"0123456789").hexdigest()
        )


async def test_postgres_cut_off_mid_patch_commits_nothing_past_the_durable_bytes(
    outage_database: str, tmp_path: Path
) -> None:
    data = random.Random(3).randbytes(4 * MiB)
    cut_done = anyio.Event()
    async with proxied(outage_database) as (proxy, url):
        # The file locker: the outage reaches the commit, not the lock (that case is above).
        settings = make_settings(tmp_path / "data", url, locker="file", single_node=True)
        async with serve(settings) as served:
            client = served.client
            upload_id = await create(client, len(data))
            first = MiB
            assert (await patch(client, upload_id, 0, data[:first])).status_code == 204

            async def body() -> AsyncIterator[bytes]:
                async for chunk in _chunks(data[first : 3 * MiB]):
                    yield chunk
                await proxy.cut()  # the body is in; the commit is what fails
                cut_done.set()

            failed = await patch(client, upload_id, first, body())
            assert cut_done.is_set()
            _assert_unavailable(failed, "PATCH")
            await proxy.restore()

            answered = await _until_ok(client, "HEAD", f"/files/{upload_id}")
            offset = int(answered.headers["Upload-Offset"])
            assert offset == first  # the failed commit moved nothing
            stored = await anyio.Path(settings.storage.files_dir / upload_id).read_bytes()
            assert stored[:offset] == data[:offset]
            resumed = await patch(client, upload_id, offset, _chunks(data[offset:]))
            assert resumed.status_code == 204, resumed.text
            assert resumed.headers["Upload-Offset"] == str(len(data))
            assert (
                await sha256_when_ready(client, upload_id, GUARD)
                == hashlib.sha256(data).hexdigest()
            )


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock (an operator's shell, a backup)."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _sqlite_settings(tmp_path: Path, template: Path) -> tuple[Settings, Path]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / "uploads.db"
    database.write_bytes(template.read_bytes())
    settings = make_settings(data_dir, f"sqlite+aiosqlite:///{database}", database_busy_timeout=0.2)
    return settings, database


async def test_a_locked_sqlite_database_is_503_then_recovers(
    tmp_path: Path, template_db: Path
) -> None:
    settings, database = _sqlite_settings(tmp_path, template_db)
    async with serve(settings) as served:
        client = served.client
        upload_id = await create(client, 10)
        assert (await patch(client, upload_id, 0, b"01234")).status_code == 204
        tus = f"/files/{upload_id}"
        with sqlite_locked(database):
            writes = {
                "PATCH": await patch(client, upload_id, 5, b"567"),
                "POST": await client.post("/files/", headers={**TUS, "Upload-Length": "3"}),
                "DELETE": await client.delete(tus, headers=TUS),
            }
            for what, answer in writes.items():
                _assert_unavailable(answer, what)
                assert "database is locked" in answer.text, what
            reads = {
                "HEAD": await head(client, upload_id),
                "GET api": await client.get(f"/api/uploads/{upload_id}"),
            }
            for what, answer in reads.items():  # readers may go on (WAL) or be told to retry
                assert answer.status_code in (200, 503), (what, answer.text)
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["detail"] == "database unavailable: database is locked"
        assert (await client.get("/readyz")).status_code == 200
        answered = await head(client, upload_id)
        assert answered.headers["Upload-Offset"] == "5"
        assert (await patch(client, upload_id, 5, b"56789")).status_code == 204
        assert (
            await sha256_when_ready(client, upload_id, GUARD)
            == hashlib.sha256(b"0123456789").hexdigest()
        )


async def test_a_patch_whose_commit_meets_a_locked_sqlite_database_commits_nothing(
    tmp_path: Path, template_db: Path
) -> None:
    settings, database = _sqlite_settings(tmp_path, template_db)
    data = random.Random(4).randbytes(2 * MiB)
    holder: list[contextlib.ExitStack] = []
    async with serve(settings) as served:
        client = served.client
        upload_id = await create(client, len(data))
        assert (await patch(client, upload_id, 0, data[:KiB])).status_code == 204

        async def body() -> AsyncIterator[bytes]:
            async for chunk in _chunks(data[KiB:MiB]):
                yield chunk
            stack = contextlib.ExitStack()
            stack.enter_context(sqlite_locked(database))
            holder.append(stack)

        try:
            failed = await patch(client, upload_id, KiB, body())
        finally:
            for stack in holder:
                stack.close()
        assert holder, "the lock was taken"
        _assert_unavailable(failed, "PATCH")
        answered = await head(client, upload_id)
        assert answered.headers["Upload-Offset"] == str(KiB)
        resumed = await patch(client, upload_id, KiB, _chunks(data[KiB:]))
        assert resumed.status_code == 204, resumed.text
        assert await sha256_when_ready(client, upload_id, GUARD) == hashlib.sha256(data).hexdigest()


class _DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter raises: the server's SQLSTATE on ``sqlstate``."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _wrapped(orig: BaseException) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("UPDATE uploads ...", None, orig)


@pytest.mark.parametrize(
    "orig",
    [
        sqlite3.OperationalError("database or disk is full"),
        _DriverError('could not extend file "base/16384/16385": No space left on device', "53100"),
    ],
    ids=["sqlite", "postgres"],
)
def test_a_full_disk_under_the_database_is_507_not_503(orig: BaseException) -> None:
    error = database_error(_wrapped(orig))
    assert isinstance(error, StorageFull)
    assert error.status == 507
    assert error.message.startswith("database storage is full: ")
    assert "Retry-After" not in error.headers


@pytest.mark.parametrize(
    "orig",
    [
        sqlite3.OperationalError("database is locked"),
        _DriverError("terminating connection due to administrator command", "57P01"),
        ConnectionRefusedError(111, "Connect call failed"),
    ],
    ids=["locked", "terminated", "refused"],
)
def test_other_driver_failures_are_503_with_retry_after(orig: BaseException) -> None:
    error = database_error(_wrapped(orig))
    assert type(error) is Unavailable
    assert error.headers["Retry-After"].isdigit()
