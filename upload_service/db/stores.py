"""Start-up check: the configured store is the one that holds the database's uploads.

A row keeps what the store that created the upload returned beside its id (``storage_ref``):
nothing for local storage, the part size and multipart upload on S3 ("5242880:<id>"). The other
store cannot read those bytes: switching ``UPLOAD_STORAGE`` under a database that has uploads
would find their storage gone at start-up's reconciliation (and at every download), so the
service refuses to start instead, naming the settings. Ended uploads (failed, expired,
terminated) have no bytes left and do not count.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from upload_service.db.models import UploadRow
from upload_service.errors import ConfigError
from upload_service.uploads import ENDED_STATES

_OTHER = {"local": "s3", "s3": "local"}


async def check_storage(engine: AsyncEngine, storage: str) -> None:
    """``ConfigError`` when uploads with bytes in this database were made on the other store."""
    made_on_s3 = UploadRow.storage_ref != ""
    query = (
        select(func.count())
        .select_from(UploadRow)
        .where(UploadRow.state.not_in([state.value for state in ENDED_STATES]))
        .where(made_on_s3 if storage == "local" else ~made_on_s3)
    )
    async with engine.connect() as connection:
        count = await connection.scalar(query)
    if count:
        other = _OTHER[storage]
        held = "1 upload" if count == 1 else f"{count} uploads"
        raise ConfigError(
            f"UPLOAD_STORAGE={storage}, but this database holds {held} stored on "
            f"{other} storage: keep UPLOAD_STORAGE={other} for this database, or start on "
            f"{storage} with a new database (UPLOAD_DATABASE_URL; by default the SQLite file in "
            "UPLOAD_DATA_DIR: a new data directory)"
        )


def check_storage_at(url: str, storage: str) -> None:
    """Blocking (runs its own event loop): ``check_storage`` on the database at ``url``, for
    ``serve`` to refuse with one line before the server starts. A database it cannot read is
    left to the start-up itself, which checks again and says why."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    async def run() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            await check_storage(engine, storage)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except (SQLAlchemyError, OSError):
        return
