"""Sessions for the repository and the outbox: shielded from cancellation, and with every driver
failure translated into ``Unavailable`` (503, ``Retry-After``) at this boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from upload_service.errors import Unavailable

# What a client is told to wait before retrying while the database is unreachable.
RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException) -> Unavailable:
    """The one translation of a driver failure (connection refused, lost, timed out, any
    SQLAlchemy error): a one-line 503 that tells the client when to retry."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0] if detail else exc.__class__.__name__
    return Unavailable(
        f"database unavailable: {reason}"[:300],
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@asynccontextmanager
async def guarded_session(
    sessions: async_sessionmaker[AsyncSession], *, begin: bool = False
) -> AsyncIterator[AsyncSession]:
    """A session whose statements a cancellation cannot interrupt, and whose driver errors
    leave as ``Unavailable``.

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
            raise database_unavailable(exc) from exc
