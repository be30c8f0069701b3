"""The PostgreSQL the tests run against: the server on 127.0.0.1:5432 (trust auth), or the one
``UPLOAD_TEST_POSTGRES`` names (an admin DSN). Each test session creates its own databases and
drops them at the end; nothing else on the server is touched.

Without a reachable server the PostgreSQL tests skip with the reason, except under ``CI=true``,
where a missing component fails the run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ADMIN_DSN = os.environ.get("UPLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _reachable() -> str | None:
    """None when the server answers, else why not."""

    async def probe() -> None:
        connection = await asyncpg.connect(ADMIN_DSN, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {ADMIN_DSN} is unreachable: {exc}"
    return None


def require_postgres() -> None:
    reason = _reachable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def database_dsn(name: str) -> str:
    """The DSN of database ``name`` on the admin DSN's server."""
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path=f"/{name}"))


def sqlalchemy_url(name: str) -> str:
    return database_dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1)


def new_database_name(purpose: str) -> str:
    return f"upload_test_{purpose}_{os.getpid()}_{secrets.token_hex(3)}"


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_database(name: str) -> None:
    """Blocking (own event loop): for session fixtures."""
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))


def drop_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def new_database(purpose: str) -> Iterator[str]:
    """A new, empty database (skips or fails without a server, as ``require_postgres``),
    dropped afterwards: its SQLAlchemy URL."""
    require_postgres()
    name = new_database_name(purpose)
    create_database(name)
    try:
        yield sqlalchemy_url(name)
    finally:
        drop_database(name)


@contextmanager
def migrated_database(purpose: str) -> Iterator[str]:
    """A new database built by the real migrations, dropped afterwards: its SQLAlchemy URL."""
    from upload_service.db.migrate import upgrade

    with new_database(purpose) as url:
        upgrade(url)
        yield url


def empty_tables(dsn: str) -> None:
    """A clean slate for the next test on a session's database (faster than a new database).
    Blocking (own event loop): for fixtures that run outside the test's loop."""

    async def truncate() -> None:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            await connection.execute("TRUNCATE uploads, upload_parts, outbox, tickets")
        finally:
            await connection.close()

    asyncio.run(truncate())
