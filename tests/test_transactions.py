"""How the repository's transactions run (``upload_service.db.session``): on SQLite one worker
thread call a transaction, on a synchronous connection with the service's pragmas (the
durability of an acknowledged offset rests on ``synchronous=FULL``); a cancellation waits for a
started transaction, which commits whole; a driver failure is a 503."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import Connection, text

from upload_service.db.engine import create_engine, create_transactions
from upload_service.db.migrate import upgrade
from upload_service.db.session import GreenletTransactions, ThreadTransactions
from upload_service.errors import Unavailable

pytestmark = pytest.mark.anyio


async def sqlite(path: Path) -> str:
    url = f"sqlite+aiosqlite:///{path}"
    await anyio.to_thread.run_sync(upgrade, url)
    return url


async def test_sqlite_transactions_run_in_a_worker_thread_with_the_service_pragmas(
    tmp_path: Path,
) -> None:
    engine = create_engine(await sqlite(tmp_path / "uploads.db"), busy_timeout=2.5)
    transactions = create_transactions(engine, busy_timeout=2.5)
    try:
        assert isinstance(transactions, ThreadTransactions)
        loop_thread = threading.get_ident()

        def pragmas(session: Connection) -> tuple[int, int, str, int, int]:
            value = [
                session.execute(text(f"PRAGMA {name}")).scalar_one()
                for name in ("synchronous", "busy_timeout", "journal_mode", "foreign_keys")
            ]
            return (*value, threading.get_ident())

        synchronous, busy, journal, foreign_keys, thread = await transactions.run(pragmas)
        assert (synchronous, busy, journal, foreign_keys) == (2, 2500, "wal", 1)  # 2: FULL
        assert thread != loop_thread
    finally:
        await transactions.aclose()
        await engine.dispose()


async def test_postgres_transactions_run_over_the_async_session(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    transactions = create_transactions(engine)
    try:
        assert isinstance(transactions, GreenletTransactions)
        assert await transactions.run(lambda s: s.execute(text("SELECT 41 + 1")).scalar_one()) == 42
    finally:
        await transactions.aclose()
        await engine.dispose()


async def test_a_cancelled_caller_waits_for_its_started_transaction_which_commits_whole(
    tmp_path: Path,
) -> None:
    engine = create_engine(await sqlite(tmp_path / "uploads.db"))
    transactions = create_transactions(engine)
    started = threading.Event()
    finished = threading.Event()
    done = threading.Event()

    def slow_write(session: Connection) -> None:
        session.execute(text("CREATE TABLE marks (n INTEGER)"))
        session.execute(text("INSERT INTO marks VALUES (1)"))
        started.set()
        finished.wait(5)  # the caller is cancelled meanwhile
        session.execute(text("INSERT INTO marks VALUES (2)"))
        done.set()

    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(partial(transactions.run, slow_write, begin=True))
                await anyio.to_thread.run_sync(started.wait, 5)
                threading.Timer(0.3, finished.set).start()
                scope.cancel()
        assert done.is_set()  # the cancelled caller went on only once the work had ended
        count = await transactions.run(
            lambda s: s.execute(text("SELECT count(*) FROM marks")).scalar_one()
        )
        assert count == 2
    finally:
        finished.set()
        await transactions.aclose()
        await engine.dispose()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    broken = tmp_path / "uploads.db"
    broken.write_bytes(b"not a database, " * 64)
    engine = create_engine(f"sqlite+aiosqlite:///{broken}")
    transactions = create_transactions(engine)
    try:
        with pytest.raises(Unavailable) as raised:
            await transactions.run(lambda s: s.execute(text("SELECT 1")).scalar_one())
        assert raised.value.message.startswith("database unavailable: ")
        assert raised.value.headers["Retry-After"].isdigit()
    finally:
        await transactions.aclose()
        await engine.dispose()
