"""Every query the service makes, over SQLAlchemy 2.0 async. The database is the source of truth for
upload state and for the offset, which only ever moves by compare-and-set (``advance``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio
from sqlalchemy import Update, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from upload_service.db.models import UploadRow
from upload_service.errors import Conflict
from upload_service.tus.protocol import decode_metadata, encode_metadata
from upload_service.uploads import ENDED_STATES, LIVE_STATES, Upload, UploadState


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)  # SQLite hands back naive datetimes; we store UTC


def _to_upload(row: UploadRow) -> Upload:
    created = _aware(row.created_at)
    updated = _aware(row.updated_at)
    assert created is not None
    assert updated is not None
    return Upload(
        id=row.id,
        length=row.length,
        offset=row.upload_offset,
        received=max(row.received, row.upload_offset),
        state=UploadState(row.state),
        metadata=decode_metadata(row.metadata_header),
        created_at=created,
        updated_at=updated,
        expires_at=_aware(row.expires_at),
        completed_at=_aware(row.completed_at),
        failure=row.failure,
        concat=row.concat,
        parts=tuple(row.parts.split()) if row.parts else (),
        final_id=row.final_id,
        sha256=row.sha256,
        state_changed_at=_aware(row.state_changed_at),
    )


def _to_row(upload: Upload) -> UploadRow:
    return UploadRow(
        id=upload.id,
        length=upload.length,
        upload_offset=upload.offset,
        received=upload.received,
        state=upload.state.value,
        metadata_header=encode_metadata(upload.metadata),
        created_at=upload.created_at,
        updated_at=upload.updated_at,
        expires_at=upload.expires_at,
        completed_at=upload.completed_at,
        failure=upload.failure,
        concat=upload.concat,
        parts=" ".join(upload.parts) or None,
        final_id=upload.final_id,
        sha256=upload.sha256,
        state_changed_at=upload.state_changed_at or upload.created_at,
    )


class UploadRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @asynccontextmanager
    async def _session(self, *, begin: bool = False) -> AsyncIterator[AsyncSession]:
        """A session whose statements a cancellation cannot interrupt.

        Cancelled mid-statement, SQLAlchemy invalidates the connection and leaves a close of it
        pending for ever (aiosqlite's worker is stopped under it), so at shutdown or on a client's
        disconnect the cancellation waits until the statement and the session's close are done.
        Each statement is short: SQLite's busy timeout bounds it.
        """
        with anyio.CancelScope(shield=True):
            async with self._sessions.begin() if begin else self._sessions() as session:
                yield session

    async def add(self, upload: Upload) -> None:
        async with self._session(begin=True) as session:
            session.add(_to_row(upload))

    async def get(self, upload_id: str) -> Upload | None:
        async with self._session() as session:
            row = await session.get(UploadRow, upload_id)
            return None if row is None else _to_upload(row)

    async def list_by_state(self, state: UploadState) -> list[Upload]:
        async with self._session() as session:
            rows = await session.scalars(select(UploadRow).where(UploadRow.state == state.value))
            return [_to_upload(row) for row in rows]

    async def _update(self, upload_id: str, where_offset: int | None, **values: object) -> Upload:
        statement = update(UploadRow).where(UploadRow.id == upload_id)
        if where_offset is not None:
            statement = statement.where(UploadRow.upload_offset == where_offset)
        return await self._execute_one(
            statement.values(**values),
            conflict="upload changed concurrently; fetch its offset and retry",
        )

    async def advance(
        self,
        upload_id: str,
        *,
        expected: int,
        offset: int,
        now: datetime,
        expires_at: datetime | None,
        length: int | None,
    ) -> Upload:
        """Move the committed offset from ``expected`` to ``offset`` (compare-and-set). Bytes up to
        ``offset`` must already be durable. Reaching ``length`` moves the upload to verifying."""
        values: dict[str, object] = {
            "upload_offset": offset,
            "received": offset,
            "updated_at": now,
            "expires_at": expires_at,
        }
        if length is not None and offset == length:
            values.update(
                state=UploadState.VERIFYING.value,
                completed_at=now,
                expires_at=None,
                state_changed_at=now,
            )
        return await self._update(upload_id, expected, **values)

    async def set_length(self, upload_id: str, length: int, now: datetime) -> Upload:
        return await self._update(upload_id, None, length=length, updated_at=now)

    async def set_received(self, upload_id: str, received: int) -> None:
        async with self._session(begin=True) as session:
            await session.execute(
                update(UploadRow).where(UploadRow.id == upload_id).values(received=received)
            )

    async def set_state(
        self,
        upload_id: str,
        state: UploadState,
        now: datetime,
        failure: str | None = None,
        *,
        only_from: tuple[UploadState, ...] = (),
    ) -> Upload:
        """Change the state; with ``only_from``, only if the upload is in one of those states
        (else ``Conflict``), so racing transitions cannot undo each other."""
        statement = update(UploadRow).where(UploadRow.id == upload_id)
        if only_from:
            statement = statement.where(UploadRow.state.in_([s.value for s in only_from]))
        values: dict[str, object] = {
            "state": state.value,
            "updated_at": now,
            "state_changed_at": now,
        }
        if failure is not None:
            values["failure"] = failure
        return await self._execute_one(statement.values(**values))

    async def mark_ready(self, upload_id: str, sha256: str, now: datetime) -> Upload:
        statement = (
            update(UploadRow)
            .where(UploadRow.id == upload_id, UploadRow.state == UploadState.VERIFYING.value)
            .values(
                state=UploadState.READY.value, sha256=sha256, updated_at=now, state_changed_at=now
            )
        )
        return await self._execute_one(statement)

    async def assembled(self, upload_id: str, length: int, now: datetime) -> Upload:
        """A final upload's parts were concatenated into its storage (durably)."""
        statement = (
            update(UploadRow)
            .where(UploadRow.id == upload_id, UploadRow.state == UploadState.RECEIVING.value)
            .values(
                length=length,
                upload_offset=length,
                received=length,
                state=UploadState.VERIFYING.value,
                completed_at=now,
                updated_at=now,
                state_changed_at=now,
                expires_at=None,
            )
        )
        return await self._execute_one(statement)

    async def add_final(self, final: Upload) -> None:
        """Insert a final upload and claim its partial uploads in one transaction. Raises
        ``Conflict`` naming a part that is no longer an unclaimed, live partial upload."""
        async with self._session(begin=True) as session:
            session.add(_to_row(final))
            for part in final.parts:
                result = await session.execute(
                    update(UploadRow)
                    .where(
                        UploadRow.id == part,
                        UploadRow.concat == "partial",
                        UploadRow.final_id.is_(None),
                        UploadRow.state.in_([state.value for state in LIVE_STATES]),
                    )
                    .values(final_id=final.id)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise Conflict(f"partial upload {part} was claimed or ended meanwhile")

    async def list_ended(self, before: datetime) -> list[str]:
        """Ids of uploads that ended (expired, terminated, failed) before ``before``, except parts
        claimed by a final upload (the final's assembly still names them)."""
        async with self._session() as session:
            rows = await session.scalars(
                select(UploadRow.id).where(
                    UploadRow.state.in_([state.value for state in ENDED_STATES]),
                    UploadRow.state_changed_at < before,
                    UploadRow.final_id.is_(None),
                )
            )
            return list(rows)

    async def forget(self, upload_id: str) -> None:
        async with self._session(begin=True) as session:
            await session.execute(delete(UploadRow).where(UploadRow.id == upload_id))

    async def release_parts(self, final_id: str) -> None:
        """An unassembled final upload ended: its parts are free to join another one."""
        async with self._session(begin=True) as session:
            await session.execute(
                update(UploadRow).where(UploadRow.final_id == final_id).values(final_id=None)
            )

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        async with self._session() as session:
            rows = await session.scalars(select(UploadRow).where(UploadRow.id.in_(upload_ids)))
            return {row.id: _to_upload(row) for row in rows}

    async def list_expired(self, now: datetime) -> list[Upload]:
        async with self._session() as session:
            rows = await session.scalars(
                select(UploadRow).where(
                    UploadRow.state == UploadState.RECEIVING.value, UploadRow.expires_at <= now
                )
            )
            return [_to_upload(row) for row in rows]

    async def list_finals_waiting(self) -> list[Upload]:
        async with self._session() as session:
            rows = await session.scalars(
                select(UploadRow).where(
                    UploadRow.state == UploadState.RECEIVING.value, UploadRow.concat == "final"
                )
            )
            return [_to_upload(row) for row in rows]

    async def _execute_one(
        self, statement: Update, conflict: str = "upload changed concurrently; fetch it and retry"
    ) -> Upload:
        """Run a conditional update of one row; ``Conflict`` when its condition no longer holds."""
        async with self._session(begin=True) as session:
            result = await session.execute(
                statement.returning(UploadRow), execution_options={"synchronize_session": False}
            )
            row = result.scalar_one_or_none()
            if row is None:
                raise Conflict(conflict)
            return _to_upload(row)

    async def force_offset(self, upload_id: str, offset: int, now: datetime) -> Upload:
        """Reconciliation only: the store holds fewer durable bytes than the committed offset."""
        return await self._update(
            upload_id, None, upload_offset=offset, received=offset, updated_at=now
        )

    async def ping(self) -> None:
        async with self._session() as session:
            await session.execute(text("SELECT 1"))
