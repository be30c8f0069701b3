"""Engine and session factories. Built by the app's lifespan or a CLI command, never at import."""

from __future__ import annotations

import logging
import sqlite3
from functools import partial
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.pool import NullPool

from upload_service.db.session import GreenletTransactions, ThreadTransactions, Transactions

logger = logging.getLogger(__name__)

# How long a SQLite statement waits for another connection's lock before "database is locked"
# (a 503 with Retry-After to the client).
BUSY_TIMEOUT = 10.0


def _sqlite_pragmas(busy_timeout: float, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    # WAL lets readers (HEAD, progress) run beside the writer. The mode is kept in the file, and
    # the migration that creates it sets it (see sqlite_pragmas), so a connection only checks:
    # switching needs the database to itself, and connections opened together while another one
    # writes were refused it at once ("database is locked", no busy wait).
    cursor.execute("PRAGMA journal_mode")
    (mode,) = cursor.fetchone()
    if str(mode).lower() != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorname != "SQLITE_BUSY":
                raise
            # another connection holds the database (a file from before the migration set the
            # mode, opened by several at once): this one works as the file is, a later one
            # switches it
            logger.info("SQLite journal mode left as %s for now: the database is busy", mode)
    # synchronous=FULL makes a committed offset survive power loss: the offset is a promise.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_pragmas(engine: AsyncEngine | Engine, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
    """Every new connection of a SQLite ``engine`` gets the service's pragmas (WAL, full sync,
    the busy timeout, foreign keys): the service's engines and the migration's."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    event.listen(sync, "connect", partial(_sqlite_pragmas, busy_timeout))


def create_engine(url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=8, max_overflow=8)
        sqlite_pragmas(engine, busy_timeout=busy_timeout)
        return engine
    # pool_pre_ping: a connection the server dropped (restart, network cut) is noticed and
    # replaced at checkout, so the service recovers from an outage without a restart.
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# SQLite: the threads (and pooled pysqlite connections) that run the repository's transactions
SQLITE_THREADS = 16


def create_transactions(engine: AsyncEngine, *, busy_timeout: float = BUSY_TIMEOUT) -> Transactions:
    """How the repository and the outbox run their transactions on ``engine``'s database: on
    SQLite, in worker threads over a synchronous engine on the same file, pooled like ``engine``
    (no pool for a ``NullPool`` engine) and with the same pragmas; else over ``engine``'s async
    sessions. Close it (``aclose``) before disposing ``engine``."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return GreenletTransactions(engine)
    sync_url = url.set(drivername="sqlite+pysqlite")
    args: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if isinstance(engine.pool, NullPool):
        args["poolclass"] = NullPool
    else:
        args.update(pool_size=SQLITE_THREADS, max_overflow=0)
    sync = sqlalchemy.create_engine(sync_url, **args)
    sqlite_pragmas(sync, busy_timeout=busy_timeout)
    return ThreadTransactions(sync, SQLITE_THREADS)
