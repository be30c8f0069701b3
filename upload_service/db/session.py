"""Sessions for the repository and the outbox: shielded from cancellation, and with every driver
failure translated at this boundary: ``StorageFull`` (507) for a full disk under the database,
else ``Unavailable`` (503, ``Retry-After``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from upload_service.errors import ServiceError, StorageFull, Unavailable

# What a client is told to wait before retrying while the database is unreachable.
RETRY_AFTER_SECONDS = 5

_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"  # disk_full: PostgreSQL could not extend a file


def database_unavailable(exc: BaseException) -> Unavailable:
    """The one translation of a driver failure (connection refused, lost, timed out, locked, a
    pool timeout, any SQLAlchemy error): a one-line 503 that tells the client when to retry."""
    return Unavailable(
        f"database unavailable: {_reason(exc)}"[:300],
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def database_error(exc: BaseException) -> ServiceError:
    """A driver failure as the client sees it: a full disk under the database is a 507 (retrying
    does not help until space is freed), anything else ``database_unavailable``."""
    if _is_disk_full(exc):
        return StorageFull(f"database storage is full: {_reason(exc)}"[:300])
    return database_unavailable(exc)


def _reason(exc: BaseException) -> str:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return detail[0] if detail else exc.__class__.__name__


def _is_disk_full(exc: BaseException) -> bool:
    driver = getattr(exc, "orig", None) or exc
    if getattr(driver, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    if getattr(driver, "sqlstate", None) == _PG_DISK_FULL:
        return True
    return "database or disk is full" in str(driver)  # aiosqlite may lose the error code


@asynccontextmanager
async def guarded_session(
    sessions: async_sessionmaker[AsyncSession], *, begin: bool = False
) -> AsyncIterator[AsyncSession]:
    """A session whose statements a cancellation cannot interrupt, and whose driver errors
    leave as ``Unavailable`` (``StorageFull`` for a full disk).

    Cancelled mid-statement, SQLAlchemy invalidates the connection and leaves a close of it
    pending for ever (aiosqlite's worker is stopped under it), so at shutdown or on a client's
    disconnect the cancellation waits until the statement and the session's close are done.
    Each statement is short: SQLite's busy timeout and the pool's timeouts bound it.
    """
    with anyio.CancelScope(shield=True):
        try:
            async with sessions.begin() if begin else sessions() as session:
                yield session
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise database_error(exc) from exc
