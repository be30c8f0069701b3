"""Alembic, driven from code: ``upgrade`` for ``upload-service migrate`` and tests, and a start-up
check that refuses to serve a database whose schema is not at the revision the models are for.

Alembic (about 10 MiB of memory) is imported only by the functions that migrate; the start-up
check reads ``alembic_version`` itself and compares it with ``SCHEMA_REVISION``, which a test keeps
equal to the migrations' head.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

# The head of migrations/versions: bump it with every new migration (tests/test_settings_cli.py).
SCHEMA_REVISION = "0009"


class SchemaError(Exception):
    """The database schema is missing or not at the revision this code expects."""


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_migrations"  # wheels carry the migrations inside the package
    return packaged if packaged.is_dir() else package.parent / "migrations"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking (alembic runs its own event loop): call from a thread or a synchronous command."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir())).get_current_head()


def _current_revisions(connection: Connection) -> list[str]:
    if not inspect(connection).has_table("alembic_version"):
        return []
    return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def at_schema_revision(url: str) -> bool:
    """Blocking (runs its own event loop): is the database at ``SCHEMA_REVISION`` already, so
    migrating would do nothing? False when it cannot be read (migrating then says why)."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    async def current() -> list[str]:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(_current_revisions)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(current()) == [SCHEMA_REVISION]
    except (SQLAlchemyError, OSError):
        return False


async def check_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        current = await connection.run_sync(_current_revisions)
    if current != [SCHEMA_REVISION]:
        raise SchemaError(
            f"database schema is at {' '.join(current) or 'nothing'}, expected "
            f"{SCHEMA_REVISION}: run `upload-service migrate`"
        )
