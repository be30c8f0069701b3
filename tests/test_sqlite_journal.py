"""SQLite runs in WAL mode. The migration that creates a database sets it, so the service's
connections never have to switch a file (which needs the database to themselves: connections
opened together while another one wrote were refused it at once, "database is locked"). A file
from before that, busy when a connection opens, is left as it is by that connection and switched
by a later one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import text

from upload_service.db.engine import create_engine
from upload_service.db.migrate import upgrade

pytestmark = pytest.mark.anyio


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    return str(mode)


async def test_a_migrated_database_is_in_wal_mode_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "uploads.db"
    await anyio.to_thread.run_sync(upgrade, f"sqlite+aiosqlite:///{path}")
    assert journal_mode(path) == "wal"


@pytest.mark.parametrize("created_by", ["the migration", "an older version"])
async def test_many_connections_opened_at_once_while_others_write_all_work(
    tmp_path: Path, created_by: str
) -> None:
    path = tmp_path / "uploads.db"
    if created_by == "the migration":
        await anyio.to_thread.run_sync(upgrade, f"sqlite+aiosqlite:///{path}")
    else:
        sqlite3.connect(path).close()  # in the default (rollback) journal mode
    engines = [create_engine(f"sqlite+aiosqlite:///{path}") for _ in range(8)]
    try:

        async def write(index: int) -> None:
            async with engines[index].begin() as connection:
                await connection.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
                await connection.execute(text("INSERT INTO t VALUES (:n)"), {"n": index})

        async with anyio.create_task_group() as group:
            for index in range(len(engines)):
                group.start_soon(write, index)
    finally:
        for engine in engines:
            await engine.dispose()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (len(engines),)


async def test_a_busy_file_from_before_is_switched_by_a_later_connection(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (n INTEGER)")
    assert journal_mode(path) == "delete"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing: no switch for now
    engine = create_engine(f"sqlite+aiosqlite:///{path}", busy_timeout=0.2)
    try:
        async with engine.connect() as connection:  # connects anyway, in the file's mode
            assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 0
        assert journal_mode(path) == "delete"
        holder.execute("COMMIT")
        await engine.dispose()  # the next connection is a new one
        async with engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    finally:
        holder.close()
        await engine.dispose()
    assert journal_mode(path) == "wal"
