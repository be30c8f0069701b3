"""PostgreSQL for the ``ours-pg`` server and the ``lockwait`` scenario on it: a fresh database for
every measurement, created on the server named by ``--pg-url`` and dropped after, whatever happened.

The server migrates the empty database itself (``upload-service serve``), as in production. The
admin connection goes through SQLAlchemy with asyncpg, both already in the repository's ``.venv``;
nothing here needs the ``psql`` client.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "upload_bench_"  # every database this suite creates starts with it
CONNECT_TIMEOUT = 5.0
_counter = itertools.count(1)


class DatabaseError(Exception):
    """The PostgreSQL server could not be reached or refused to create or drop a database."""


def _async_url(url: str, database: str | None = None) -> URL:
    parsed = make_url(url).set(drivername="postgresql+asyncpg")
    return parsed if database is None else parsed.set(database=database)


def server_url(url: str, database: str) -> str:
    """The ``UPLOAD_DATABASE_URL`` of ``database`` on the server of ``url``."""
    return _async_url(url, database).render_as_string(hide_password=False)


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "orig", None) or exc
    lines = str(detail).strip().splitlines()
    return f"{type(detail).__name__}: {lines[0] if lines else ''}"


async def _execute(url: str, statements: list[str]) -> str | None:
    """Run ``statements`` in order; the first value of the last one's first row, if it has rows."""
    # AUTOCOMMIT: CREATE and DROP DATABASE cannot run inside a transaction
    engine = create_async_engine(
        _async_url(url),
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": CONNECT_TIMEOUT},
    )
    last: str | None = None
    try:
        async with engine.connect() as conn:
            for statement in statements:
                result = await conn.execute(text(statement))
                value = result.scalar() if result.returns_rows else None
                last = None if value is None else str(value)
    finally:
        await engine.dispose()
    return last


def _run(url: str, statements: list[str]) -> str | None:
    try:
        return asyncio.run(asyncio.wait_for(_execute(url, statements), CONNECT_TIMEOUT * 3))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise DatabaseError(_describe(exc)) from exc


def server_version(url: str) -> str:
    """``PostgreSQL 15.x at host:port``; DatabaseError when the server cannot be used."""
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError) as exc:  # sqlalchemy's ArgumentError among them
        raise DatabaseError(f"not a database URL: {exc}") from exc
    version = _run(url, ["SHOW server_version"])
    return f"PostgreSQL {version} at {parsed.host or 'localhost'}:{parsed.port or 5432}"


def leftovers(url: str) -> list[str]:
    """The databases this suite created on the server of ``url`` that are still there."""
    names = _run(
        url,
        [f"SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '{PREFIX}%'"],
    )
    return sorted(names.split(",")) if names else []


def _name(hint: str) -> str:
    tail = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:24]
    return f"{PREFIX}{os.getpid()}_{next(_counter)}_{tail}"


@contextmanager
def fresh_database(url: str, hint: str) -> Iterator[str]:
    """A new, empty database on the server of ``url`` for the body of the ``with``; yields its
    ``UPLOAD_DATABASE_URL``. It is dropped after, with ``FORCE`` so that sessions a killed server
    left behind do not keep it."""
    name = _name(hint)
    _run(url, [f'CREATE DATABASE "{name}"'])
    try:
        yield server_url(url, name)
    finally:
        _run(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


def database_name(url: str) -> str:
    name = make_url(url).database
    if not name:
        raise DatabaseError(f"no database in {url!r}")
    return name


def exists(url: str, name: str) -> bool:
    """Whether the server of ``url`` has a database ``name``."""
    found = _run(url, [f"SELECT count(*) FROM pg_database WHERE datname = '{_plain(name)}'"])
    return found == "1"


def recreate(url: str, name: str, *, template: str | None = None) -> None:
    """Drop ``name`` if it exists (with its sessions) and create it again: empty, or a copy of
    ``template``."""
    like = f' TEMPLATE "{_plain(template)}"' if template else ""
    _run(
        url,
        [
            f'DROP DATABASE IF EXISTS "{_plain(name)}" WITH (FORCE)',
            f'CREATE DATABASE "{_plain(name)}"{like}',
        ],
    )


def drop(url: str, name: str) -> None:
    _run(url, [f'DROP DATABASE IF EXISTS "{_plain(name)}" WITH (FORCE)'])


def rename(url: str, old: str, new: str) -> None:
    _run(url, [f'ALTER DATABASE "{_plain(old)}" RENAME TO "{_plain(new)}"'])


def _plain(name: str) -> str:
    """A database name this suite made: letters, digits and underscores only."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise DatabaseError(f"not a database name of this suite: {name!r}")
    return name
