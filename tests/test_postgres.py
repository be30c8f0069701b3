"""PostgreSQL as users deploy it: the same migrations build its schema, replicas that start at once
migrate it once, ``serve`` migrates it by itself, and an outage answers 503, never 500."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import TUS, make_settings
from tests.postgres import (
    create_database,
    database_dsn,
    drop_database,
    new_database_name,
    require_postgres,
    sqlalchemy_url,
)
from tests.tus_http_helpers import serve
from upload_service.db.migrate import SCHEMA_REVISION, alembic_config, upgrade
from upload_service.db.models import Base

GUARD = 120.0  # seconds; a hang is a failure, not a measurement
RACERS = 6
MIGRATION_GUARD = 30.0  # a migration takes well under a second; a deadlock fails the test


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """An empty database (no schema): its name."""
    require_postgres()
    name = new_database_name("fresh")
    create_database(name)
    try:
        yield name
    finally:
        drop_database(name)


async def _revisions(name: str) -> list[str]:
    connection = await asyncpg.connect(database_dsn(name))
    try:
        rows = await connection.fetch("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    return [row["version_num"] for row in rows]


def _env(name: str, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("UPLOAD_")}
    env.update(UPLOAD_DATABASE_URL=sqlalchemy_url(name), **values)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "upload_service", *args]


def _differences(connection: Connection) -> tuple[list[object], set[str]]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, Base.metadata), set(inspect(connection).get_table_names())


async def test_models_and_migrations_agree_on_postgres(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            differences, tables = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []
    assert tables == {"uploads", "upload_parts", "outbox", "tickets", "alembic_version"}


async def test_migrations_downgrade_and_upgrade_again_on_postgres(fresh_database: str) -> None:
    import anyio.to_thread
    from alembic import command

    url = sqlalchemy_url(fresh_database)
    await anyio.to_thread.run_sync(upgrade, url)
    await anyio.to_thread.run_sync(command.downgrade, alembic_config(url), "base")
    assert await _revisions(fresh_database) == []
    await anyio.to_thread.run_sync(upgrade, url)
    assert await _revisions(fresh_database) == [SCHEMA_REVISION]


# A replica's migration, held at a start line: it imports everything first, says "ready", then
# waits for the go file, so the racers enter the migration within a millisecond of each other.
RACER = """
import os, sys, time
from upload_service.db.migrate import upgrade
import alembic.command, alembic.config, alembic.script, alembic.runtime.migration
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.0005)
upgrade(sys.argv[1])
"""


def test_replicas_migrating_at_the_same_moment_migrate_once(
    fresh_database: str, tmp_path: Path
) -> None:
    """Without the migration's advisory lock, racing runs collide on CREATE TABLE (or deadlock
    on the catalog), as replicas whose ``serve`` starts at once would."""
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, sqlalchemy_url(fresh_database), str(go)],
            env=_env(fresh_database),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(RACERS)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [racer.communicate(timeout=MIGRATION_GUARD)[0] for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert [racer.returncode for racer in racers] == [0] * RACERS, outputs
    assert asyncio.run(_revisions(fresh_database)) == [SCHEMA_REVISION]


def test_the_migrate_command_on_postgres(fresh_database: str, tmp_path: Path) -> None:
    for _ in range(2):  # the second run finds the schema at head and changes nothing
        run = subprocess.run(
            _command("migrate"),
            env=_env(fresh_database, UPLOAD_DATA_DIR=str(tmp_path / "data")),
            capture_output=True,
            text=True,
            timeout=GUARD,
            check=False,
        )
        assert run.returncode == 0, run.stderr
    assert asyncio.run(_revisions(fresh_database)) == [SCHEMA_REVISION]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_serve_migrates_a_new_postgres_database_by_itself(
    fresh_database: str, tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            _command("serve", "--port", str(port)),
            env=_env(fresh_database, UPLOAD_DATA_DIR=str(tmp_path / "data")),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + GUARD
        ready = None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            while ready is None and time.monotonic() < deadline and server.poll() is None:
                try:
                    ready = client.get("/readyz")
                except httpx.TransportError:
                    time.sleep(0.05)
            assert ready is not None, f"serve did not start:\n{log.read_text()}"
            assert ready.status_code == 200, ready.text
            created = client.post("/files/", headers={**TUS, "Upload-Length": "3"})
            assert created.status_code == 201, created.text
    finally:
        server.terminate()
        server.wait(timeout=GUARD)
    assert asyncio.run(_revisions(fresh_database)) == [SCHEMA_REVISION]


async def _allow_connections(name: str, allowed: bool) -> None:
    from tests.postgres import ADMIN_DSN

    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
    finally:
        await admin.close()


async def test_a_database_outage_answers_503_with_retry_after_then_recovers(
    fresh_database: str, tmp_path: Path
) -> None:
    import anyio.to_thread

    url = sqlalchemy_url(fresh_database)
    await anyio.to_thread.run_sync(upgrade, url)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    async with serve(make_settings(data_dir, url)) as served:
        client = served.client
        created = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
        assert created.status_code == 201
        location = created.headers["Location"]
        patched = await client.patch(
            location,
            content=b"01234",
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204
        await _allow_connections(fresh_database, False)
        try:
            for method in ("HEAD", "PATCH", "POST"):
                headers = {**TUS, "Upload-Offset": "5", "Upload-Length": "3"}
                headers["Content-Type"] = "application/offset+octet-stream"
                target = "/files/" if method == "POST" else location
                answer = await client.request(method, target, headers=headers, content=b"567")
                assert answer.status_code == 503, (method, answer.text)
                assert answer.headers["Retry-After"].isdigit()
                assert answer.headers["Tus-Resumable"] == "1.0.0"
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "database unavailable" in ready.json()["detail"]
        finally:
            await _allow_connections(fresh_database, True)
        head = await client.head(location, headers=TUS)
        deadline = time.monotonic() + GUARD
        while head.status_code == 503 and time.monotonic() < deadline:  # as a client retries
            await anyio.sleep(0.05)
            head = await client.head(location, headers=TUS)
        assert head.status_code == 200
        assert head.headers["Upload-Offset"] == "5"  # nothing was lost, nothing invented
        resumed = await client.patch(
            location,
            content=b"56789",
            headers={
                **TUS,
                "Upload-Offset": "5",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert resumed.status_code == 204
        assert resumed.headers["Upload-Offset"] == "10"
