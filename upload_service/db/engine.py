"""Engine and session factories. Built by the app's lifespan or a CLI command, never at import."""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

# How long a SQLite statement waits for another connection's lock before "database is locked"
# (a 503 with Retry-After to the client).
BUSY_TIMEOUT = 10.0


def _sqlite_pragmas(busy_timeout: float, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (HEAD, progress) run beside the writer; synchronous=FULL makes a committed
    # offset survive power loss, since the offset is a promise to the client.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=8, max_overflow=8)
        event.listen(engine.sync_engine, "connect", partial(_sqlite_pragmas, busy_timeout))
        return engine
    # pool_pre_ping: a connection the server dropped (restart, network cut) is noticed and
    # replaced at checkout, so the service recovers from an outage without a restart.
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
