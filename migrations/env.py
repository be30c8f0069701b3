"""Alembic environment: the URL comes from the service settings unless the caller set one."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from upload_service.db.engine import sqlite_pragmas
from upload_service.db.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from upload_service.settings import load_settings

    settings = load_settings()
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.database.url


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=Base.metadata, render_as_batch=True, **kwargs)  # type: ignore[arg-type]


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


# Several replicas may start (and migrate) at the same moment: on PostgreSQL each migration run
# holds this transaction-level advisory lock, so one migrates while the others wait and then find
# the schema at head. DDL is transactional there, so a run killed midway leaves nothing half done.
MIGRATION_LOCK = 0x75706C6F6164  # "upload"


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(_url(), poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        # A database created here is in WAL mode from the start, as the service runs it: the
        # service's connections then never have to switch it (which needs it to themselves).
        sqlite_pragmas(engine)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
