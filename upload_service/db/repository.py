"""The upload repository over SQLAlchemy 2.0 async (SQLite through aiosqlite, PostgreSQL through
asyncpg): its transitions. Each is one conditional ``UPDATE ... RETURNING`` (compare-and-set); a
driver failure of any kind leaves as ``Unavailable`` (503, ``Retry-After``), except a full disk
under the database, which is ``StorageFull`` (507). Beside it: the row format (``rows``), the
listings (``listing``, its base), the owner's quota (``quota``) and the parts of final uploads
with their race story (``parts``).

Crash story: every transition, with its quota check and its outbox event, is one transaction. A
kill -9 before the commit leaves the row as it was and no event; after it, the new state and its
event are both durable. A transition is never half applied, and an event is never written for a
state change that did not happen (nor lost for one that did).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Update, delete, false, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from upload_service.db.base import Quota, Usage
from upload_service.db.listing import SqlListing
from upload_service.db.models import UploadPartRow, UploadRow
from upload_service.db.outbox import outbox_row
from upload_service.db.parts import finals_receiving, link_parts, loaded
from upload_service.db.quota import Growth, check_new, growth, usage_of
from upload_service.db.rows import in_states, receiving, to_row, to_upload, video_json
from upload_service.errors import Conflict
from upload_service.outbox import EventType
from upload_service.uploads import LIVE_STATES, Upload, UploadState, VideoInfo


class SqlUploadRepository(SqlListing):
    """``UploadRepository`` over an async SQLAlchemy session factory, with the ``Outbox``
    capability: with ``events`` on, the transitions that report events insert them in their own
    transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, events: bool = False) -> None:
        super().__init__(sessions)
        self._reporting = events

    def _reported(self, event: EventType) -> EventType | None:
        return event if self._reporting else None

    async def add(self, upload: Upload, quota: Quota | None = None) -> None:
        async with self._session(begin=True) as session:
            if quota is not None and upload.owner is not None:
                await check_new(session, upload, quota)
            row = to_row(upload)
            session.add(row)
            if self._reporting:
                session.add(outbox_row(EventType.POST_CREATE, to_upload(row), upload.created_at))

    async def usage(self, owner: str) -> Usage:
        async with self._session() as session:
            return await usage_of(session, owner)

    async def get(self, upload_id: str) -> Upload | None:
        async with self._session() as session:
            row = await session.get(UploadRow, upload_id)
            return None if row is None else (await loaded(session, [row]))[0]

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        async with self._session() as session:
            rows = await session.scalars(select(UploadRow).where(UploadRow.id.in_(upload_ids)))
            return {upload.id: upload for upload in await loaded(session, list(rows))}

    # -- transitions, each a compare-and-set ----------------------------------------------------

    async def claim(self, upload_id: str, token: int) -> Upload | None:
        statement = update(UploadRow).where(UploadRow.id == upload_id, UploadRow.fence <= token)
        try:
            return await self._execute_one(
                statement.values(fence=token), "upload was taken over by a newer request"
            )
        except Conflict:
            if await self.get(upload_id) is None:
                return None
            raise

    async def advance(
        self,
        upload_id: str,
        *,
        expected: int,
        offset: int,
        now: datetime,
        expires_at: datetime | None,
        fence: int | None = None,
        quota: Quota | None = None,
    ) -> Upload:
        return await self._transition(
            upload_id,
            (receiving(), UploadRow.upload_offset == expected, *_fenced(fence)),
            "upload changed concurrently; fetch its offset and retry",
            guard=growth(upload_id, quota, offset, since=expected),
            upload_offset=offset,
            received=offset,
            updated_at=now,
            expires_at=expires_at,
        )

    async def declare_length(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        return await self._transition(
            upload_id,
            (receiving(), UploadRow.length.is_(None), UploadRow.upload_offset <= length),
            "the upload's length was declared meanwhile",
            guard=growth(upload_id, quota, length),
            length=length,
            updated_at=now,
        )

    async def complete(self, upload_id: str, now: datetime) -> Upload:
        return await self._transition(
            upload_id,
            (receiving(), UploadRow.length == UploadRow.upload_offset),
            "upload is not complete, or was completed meanwhile",
            state=UploadState.VERIFYING.value,
            completed_at=now,
            expires_at=None,
            updated_at=now,
            state_changed_at=now,
        )

    async def assembled(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        return await self._transition(
            upload_id,
            (receiving(), UploadRow.concat == "final"),
            "final upload was assembled or ended meanwhile",
            guard=growth(upload_id, quota, length),
            length=length,
            upload_offset=length,
            received=length,
            state=UploadState.VERIFYING.value,
            completed_at=now,
            updated_at=now,
            state_changed_at=now,
            expires_at=None,
        )

    async def mark_ready(
        self,
        upload_id: str,
        sha256: str,
        now: datetime,
        *,
        video: VideoInfo | None = None,
    ) -> Upload:
        return await self._transition(
            upload_id,
            (UploadRow.state == UploadState.VERIFYING.value,),
            "upload is no longer being verified",
            event=self._reported(EventType.POST_FINISH),
            state=UploadState.READY.value,
            sha256=sha256,
            video=video_json(video),
            updated_at=now,
            state_changed_at=now,
        )

    async def fail(
        self, upload_id: str, reason: str, now: datetime, *, only_from: tuple[UploadState, ...]
    ) -> Upload:
        return await self._transition(
            upload_id,
            (in_states(only_from),),
            "upload changed state meanwhile",
            state=UploadState.FAILED.value,
            failure=reason,
            updated_at=now,
            state_changed_at=now,
        )

    async def terminate(self, upload_id: str, now: datetime) -> Upload:
        statement = (
            update(UploadRow)
            .where(UploadRow.id == upload_id, in_states(LIVE_STATES))
            .values(state=UploadState.TERMINATED.value, updated_at=now, state_changed_at=now)
        )
        async with self._session(begin=True) as session:
            upload = await _one(session, statement, "upload has ended already")
            # Read after the update, which holds the row (PostgreSQL) or the database (SQLite)
            # until the commit: a final inserted concurrently committed before it (and is seen
            # here) or finds this part terminated (see the module's race story).
            waiting = await session.scalar(finals_receiving(upload_id).limit(1))
            if waiting is not None:  # raising rolls the termination back
                raise Conflict(
                    f"partial upload belongs to final upload {waiting}, not assembled yet"
                )
            if self._reporting:
                session.add(outbox_row(EventType.POST_TERMINATE, upload, upload.updated_at))
            return upload

    async def expire(self, upload_id: str, now: datetime) -> Upload:
        return await self._transition(
            upload_id,
            (receiving(), UploadRow.expires_at <= now),
            "upload was extended or ended meanwhile",
            event=self._reported(EventType.POST_EXPIRE),
            state=UploadState.EXPIRED.value,
            updated_at=now,
            state_changed_at=now,
        )

    async def force_offset(
        self,
        upload_id: str,
        *,
        expected: int,
        offset: int,
        now: datetime,
        fence: int | None = None,
    ) -> Upload:
        return await self._transition(
            upload_id,
            (receiving(), UploadRow.upload_offset == expected, *_fenced(fence)),
            "upload changed concurrently; fetch its offset and retry",
            upload_offset=offset,
            received=offset,
            updated_at=now,
        )

    async def _transition(
        self,
        upload_id: str,
        conditions: tuple[ColumnElement[bool], ...],
        conflict: str,
        event: EventType | None = None,
        guard: Growth | None = None,
        **values: object,
    ) -> Upload:
        """One conditional update of one row; ``Conflict`` when its condition no longer holds.
        With ``event``, the event's outbox row is inserted in the same transaction; with
        ``guard``, the owner's quota is checked first, in it."""
        statement = update(UploadRow).where(UploadRow.id == upload_id, *conditions)
        return await self._execute_one(statement.values(**values), conflict, event, guard)

    async def _execute_one(
        self,
        statement: Update,
        conflict: str,
        event: EventType | None = None,
        guard: Growth | None = None,
    ) -> Upload:
        async with self._session(begin=True) as session:
            if guard is not None:
                await guard.check(session)
            upload = await _one(session, statement, conflict)
            if event is not None:
                session.add(outbox_row(event, upload, upload.updated_at))
            return upload

    # -- not state changes ----------------------------------------------------------------------

    async def set_received(self, upload_id: str, received: int) -> None:
        async with self._session(begin=True) as session:
            await session.execute(
                update(UploadRow).where(UploadRow.id == upload_id).values(received=received)
            )

    async def add_final(self, final: Upload, quota: Quota | None = None) -> None:
        async with self._session(begin=True) as session:
            if quota is not None and final.owner is not None:
                await check_new(session, final, quota)
            row = to_row(final)
            session.add(row)
            await session.flush()  # SQLite: the insert takes the write lock before parts are read
            await link_parts(session, final)
            if self._reporting:
                session.add(outbox_row(EventType.POST_CREATE, to_upload(row), final.created_at))

    async def forget(self, upload_id: str) -> None:
        async with self._session(begin=True) as session:
            await session.execute(delete(UploadRow).where(UploadRow.id == upload_id))
            await session.execute(
                delete(UploadPartRow).where(
                    or_(UploadPartRow.final_id == upload_id, UploadPartRow.part_id == upload_id)
                )
            )

    async def ping(self) -> None:
        # A write that changes nothing: it needs the write lock (a SQLite database locked by
        # another connection is not ready, though it may still be read) and a live connection.
        async with self._session(begin=True) as session:
            await session.execute(
                update(UploadRow).where(false()).values(fence=UploadRow.fence),
                execution_options={"synchronize_session": False},
            )


async def _one(session: AsyncSession, statement: Update, conflict: str) -> Upload:
    """Run a conditional update of one row; the row as it is now, ``Conflict`` if none matched."""
    result = await session.execute(
        statement.returning(UploadRow), execution_options={"synchronize_session": False}
    )
    row = result.scalar_one_or_none()
    if row is None:
        raise Conflict(conflict)
    return (await loaded(session, [row]))[0]


def _fenced(fence: int | None) -> tuple[ColumnElement[bool], ...]:
    """A commit by a holder whose fencing token is no longer the row's latest is refused."""
    return () if fence is None else (UploadRow.fence == fence,)
