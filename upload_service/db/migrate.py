"""Alembic, driven from code: ``upgrade`` for ``upload-service migrate`` and tests, and a start-up
check that refuses to serve a database whose schema is not at the head revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


class SchemaError(Exception):
    """The database schema is missing or not at the revision this code expects."""


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_migrations"  # wheels carry the migrations inside the package
    return packaged if packaged.is_dir() else package.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking (alembic runs its own event loop): call from a thread or a synchronous command."""
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory(str(migrations_dir())).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def check_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        current = await connection.run_sync(_current_revision)
    head = head_revision()
    if current != head:
        raise SchemaError(
            f"database schema is at {current or 'nothing'}, expected {head}: "
            "run `upload-service migrate`"
        )
