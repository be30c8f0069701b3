"""Transactions for the repository and the outbox: shielded from cancellation, and with every
driver failure translated at this boundary: ``StorageFull`` (507) for a full disk under the
database, else ``Unavailable`` (503, ``Retry-After``).

The queries are plain functions of a synchronous ``Connection`` (SQLAlchemy Core: an ORM
session costs three times the statement), one function a transaction, and a ``Transactions``
runs each: on PostgreSQL in SQLAlchemy's greenlet over an async connection (asyncpg, on the
loop), on SQLite as one call in a worker thread on a pysqlite connection. The async SQLite
driver (aiosqlite) hands every call (a cursor, a statement, a fetch, a close, a rollback) to its
connection's thread and back, five or more thread hops a transaction and most of a HEAD's cost;
here a transaction is one hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Protocol, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from upload_service import threads
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


T = TypeVar("T")


class Transactions(Protocol):
    """Runs ``work`` on one connection (``begin``: in one transaction, committed when it returns
    and rolled back when it raises), uninterruptible once started, with driver failures
    translated; ``aclose`` releases its connections."""

    async def run(self, work: Callable[[Connection], T], *, begin: bool = False) -> T: ...

    async def aclose(self) -> None: ...


@contextmanager
def _guarded() -> Iterator[None]:
    """Both ``Transactions``: a started transaction runs to its end whatever cancels its caller,
    and a driver failure leaves as ``database_error``."""
    with anyio.CancelScope(shield=True):
        try:
            yield
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise database_error(exc) from exc


class GreenletTransactions:
    """PostgreSQL (or any async driver): the work runs in SQLAlchemy's greenlet over an async
    connection of ``engine``, each statement awaiting the driver on the loop.

    Cancelled mid-statement, SQLAlchemy invalidates the connection and leaves a close of it
    pending for ever, so a cancellation (at shutdown, on a client's disconnect) waits until the
    work and the connection's release are done; each statement is short, the pool's and the
    server's timeouts bound it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, work: Callable[[Connection], T], *, begin: bool = False) -> T:
        with _guarded():
            async with self._engine.begin() if begin else self._engine.connect() as connection:
                result = await connection.run_sync(work)
        return result

    async def aclose(self) -> None:
        """The async engine is the caller's to dispose."""


class ThreadTransactions:
    """SQLite: each transaction is one call in a worker thread, on a connection of ``engine``
    (synchronous pysqlite); at most ``threads`` at once, the size of the engine's pool.

    A cancellation waits for the call to end: a statement is never cut off half-way, and
    SQLite's busy timeout bounds the wait."""

    def __init__(self, engine: Engine, threads: int) -> None:
        self._engine = engine
        self._slots = asyncio.Semaphore(threads)  # free slots are taken without a turn of the loop

    async def run(self, work: Callable[[Connection], T], *, begin: bool = False) -> T:
        call = partial(self._on_connection, work, begin)
        with _guarded():
            async with self._slots:
                result = await threads.run_sync(call)
        return result

    def _on_connection(self, work: Callable[[Connection], T], begin: bool) -> T:
        with self._engine.begin() if begin else self._engine.connect() as connection:
            return work(connection)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._engine.dispose)
