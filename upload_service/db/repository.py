"""The upload repository over SQLAlchemy 2.0 async (SQLite through aiosqlite, PostgreSQL through
asyncpg): every query the service makes. Each transition is one conditional ``UPDATE ... RETURNING``
(compare-and-set); a driver failure of any kind leaves as ``Unavailable`` (503, ``Retry-After``),
except a full disk under the database, which is ``StorageFull`` (507).

Parts of final uploads live in ``upload_parts`` (a partial upload may be a part of several
finals). Race story: ``add_final`` reads each part ``FOR SHARE`` (PostgreSQL; SQLite has one
writer at a time, and the final's insert takes the write lock first), while ``terminate`` and
``expire`` update the part's row before they read its finals. Whichever commits first, the other
sees it: a final inserted first makes ``terminate`` refuse (its update waited for the final's
commit, and the read after it, a new snapshot, finds the final), and ``expire`` returns the part
with that final among its ``finals`` to be failed; a part that ended first is a ``Conflict`` for
``add_final``, whose locking read re-checks the updated row. So no final still receiving ever
names a terminated part, and every final that names an expired part is found.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

from sqlalchemy import (
    ColumnElement,
    Select,
    Update,
    and_,
    case,
    delete,
    false,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from upload_service.db.models import UploadPartRow, UploadRow, aware
from upload_service.db.outbox import SqlOutbox, outbox_row
from upload_service.db.session import guarded_session
from upload_service.errors import Conflict
from upload_service.outbox import EventType
from upload_service.repository import Quota, UploadQuery, Usage
from upload_service.uploads import (
    ENDED_STATES,
    LIVE_STATES,
    Metadata,
    Upload,
    UploadState,
    VideoInfo,
)

# PostgreSQL: the advisory lock class (the two-int4 keyspace, apart from the upload locks'
# one-bigint keys) under which one owner's quota-checked creations are serialised.
QUOTA_LOCK_CLASS = 0x75706C64  # "upld"

# A final upload, joined to the parts it names (made once: building an alias costs far more than
# the query that uses it).
_FINAL = aliased(UploadRow, name="final")


def _metadata(stored: dict[str, str | None]) -> Metadata:
    # JSON holds text: raw values (any bytes) are kept base64-encoded, keys as they are
    return {
        key: None if value is None else base64.b64decode(value) for key, value in stored.items()
    }


def _metadata_json(metadata: Metadata) -> dict[str, str | None]:
    return {
        key: None if value is None else base64.b64encode(value).decode("ascii")
        for key, value in metadata.items()
    }


_VIDEO_FIELDS = frozenset(field.name for field in dataclasses.fields(VideoInfo))


def _video(stored: dict[str, object] | None) -> VideoInfo | None:
    if not stored or not isinstance(stored.get("container"), str):
        return None
    known = {key: value for key, value in stored.items() if key in _VIDEO_FIELDS}
    return VideoInfo(**known)  # type: ignore[arg-type]


def _video_json(video: VideoInfo | None) -> dict[str, object] | None:
    return None if video is None else dataclasses.asdict(video)


def _utc(moment: datetime) -> datetime:
    # SQLite keeps the wall-clock text without its offset: every bound moment is UTC
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _to_upload(row: UploadRow, finals: tuple[str, ...] = ()) -> Upload:
    created = aware(row.created_at)
    updated = aware(row.updated_at)
    assert created is not None
    assert updated is not None
    return Upload(
        id=row.id,
        length=row.length,
        offset=row.upload_offset,
        received=max(row.received, row.upload_offset),
        state=UploadState(row.state),
        metadata=_metadata(row.metadata_json),
        created_at=created,
        updated_at=updated,
        expires_at=aware(row.expires_at),
        completed_at=aware(row.completed_at),
        failure=row.failure,
        concat=row.concat,
        parts=tuple(row.parts.split()) if row.parts else (),
        finals=finals,
        sha256=row.sha256,
        state_changed_at=aware(row.state_changed_at),
        storage_ref=row.storage_ref,
        fence=row.fence,
        owner=row.owner,
        size_cap=row.size_cap,
        video=_video(row.video),
    )


def _to_row(upload: Upload) -> UploadRow:
    return UploadRow(
        id=upload.id,
        length=upload.length,
        upload_offset=upload.offset,
        received=upload.received,
        state=upload.state.value,
        metadata_json=_metadata_json(upload.metadata),
        created_at=upload.created_at,
        updated_at=upload.updated_at,
        expires_at=upload.expires_at,
        completed_at=upload.completed_at,
        failure=upload.failure,
        concat=upload.concat,
        parts=" ".join(upload.parts) or None,
        sha256=upload.sha256,
        state_changed_at=upload.state_changed_at or upload.created_at,
        storage_ref=upload.storage_ref,
        fence=upload.fence,
        owner=upload.owner,
        size_cap=upload.size_cap,
        video=_video_json(upload.video),
    )


class SqlUploadRepository(SqlOutbox):
    """``UploadRepository`` over an async SQLAlchemy session factory, with the ``Outbox``
    capability: the transitions that report events insert them in their own transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)

    def _session(self, *, begin: bool = False) -> AbstractAsyncContextManager[AsyncSession]:
        return guarded_session(self._sessions, begin=begin)

    async def add(
        self, upload: Upload, quota: Quota | None = None, *, outbox: bool = False
    ) -> None:
        async with self._session(begin=True) as session:
            if quota is not None and upload.owner is not None:
                await _check_new(session, upload, quota)
            row = _to_row(upload)
            session.add(row)
            if outbox:
                session.add(outbox_row(EventType.POST_CREATE, _to_upload(row), upload.created_at))

    async def usage(self, owner: str) -> Usage:
        async with self._session() as session:
            return await _usage(session, owner)

    async def get(self, upload_id: str) -> Upload | None:
        async with self._session() as session:
            row = await session.get(UploadRow, upload_id)
            return None if row is None else (await _loaded(session, [row]))[0]

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        async with self._session() as session:
            rows = await session.scalars(select(UploadRow).where(UploadRow.id.in_(upload_ids)))
            return {upload.id: upload for upload in await _loaded(session, list(rows))}

    async def list_by_state(self, state: UploadState) -> list[Upload]:
        return await self._list(UploadRow.state == state.value)

    async def list_page(self, query: UploadQuery) -> list[Upload]:
        conditions: list[ColumnElement[bool]] = []
        if query.owner is not None:
            conditions.append(UploadRow.owner == query.owner)
        if query.states:
            conditions.append(_in(query.states))
        if query.created_after is not None:
            conditions.append(UploadRow.created_at >= _utc(query.created_after))
        if query.created_before is not None:
            conditions.append(UploadRow.created_at < _utc(query.created_before))
        if query.after is not None:
            moment = _utc(query.after.created_at)
            conditions.append(
                or_(
                    UploadRow.created_at < moment,
                    and_(UploadRow.created_at == moment, UploadRow.id < query.after.id),
                )
            )
        statement = (
            select(UploadRow)
            .where(*conditions)
            .order_by(UploadRow.created_at.desc(), UploadRow.id.desc())
            .limit(query.limit)
        )
        async with self._session() as session:
            return await _loaded(session, list(await session.scalars(statement)))

    async def list_expired(self, now: datetime) -> list[Upload]:
        return await self._list(
            UploadRow.state == UploadState.RECEIVING.value, UploadRow.expires_at <= now
        )

    async def list_finals_waiting(self) -> list[Upload]:
        return await self._list(
            UploadRow.state == UploadState.RECEIVING.value, UploadRow.concat == "final"
        )

    async def _list(self, *conditions: ColumnElement[bool]) -> list[Upload]:
        async with self._session() as session:
            rows = await session.scalars(select(UploadRow).where(*conditions))
            return await _loaded(session, list(rows))

    async def list_ended(self, before: datetime) -> list[Upload]:
        awaited = (
            select(UploadPartRow.part_id)
            .join(_FINAL, _FINAL.id == UploadPartRow.final_id)
            .where(
                UploadPartRow.part_id == UploadRow.id, _FINAL.state == UploadState.RECEIVING.value
            )
            .exists()
        )
        return await self._list(_in(ENDED_STATES), UploadRow.state_changed_at < before, ~awaited)

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
            (_receiving(), UploadRow.upload_offset == expected, *_fenced(fence)),
            "upload changed concurrently; fetch its offset and retry",
            guard=_growth(upload_id, quota, offset, since=expected),
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
            (_receiving(), UploadRow.length.is_(None), UploadRow.upload_offset <= length),
            "the upload's length was declared meanwhile",
            guard=_growth(upload_id, quota, length),
            length=length,
            updated_at=now,
        )

    async def complete(self, upload_id: str, now: datetime) -> Upload:
        return await self._transition(
            upload_id,
            (_receiving(), UploadRow.length == UploadRow.upload_offset),
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
            (_receiving(), UploadRow.concat == "final"),
            "final upload was assembled or ended meanwhile",
            guard=_growth(upload_id, quota, length),
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
        outbox: bool = False,
        video: VideoInfo | None = None,
    ) -> Upload:
        return await self._transition(
            upload_id,
            (UploadRow.state == UploadState.VERIFYING.value,),
            "upload is no longer being verified",
            event=EventType.POST_FINISH if outbox else None,
            state=UploadState.READY.value,
            sha256=sha256,
            video=_video_json(video),
            updated_at=now,
            state_changed_at=now,
        )

    async def fail(
        self, upload_id: str, reason: str, now: datetime, *, only_from: tuple[UploadState, ...]
    ) -> Upload:
        return await self._transition(
            upload_id,
            (_in(only_from),),
            "upload changed state meanwhile",
            state=UploadState.FAILED.value,
            failure=reason,
            updated_at=now,
            state_changed_at=now,
        )

    async def terminate(self, upload_id: str, now: datetime, *, outbox: bool = False) -> Upload:
        statement = (
            update(UploadRow)
            .where(UploadRow.id == upload_id, _in(LIVE_STATES))
            .values(state=UploadState.TERMINATED.value, updated_at=now, state_changed_at=now)
        )
        async with self._session(begin=True) as session:
            upload = await _one(session, statement, "upload has ended already")
            # Read after the update, which holds the row (PostgreSQL) or the database (SQLite)
            # until the commit: a final inserted concurrently committed before it (and is seen
            # here) or finds this part terminated (see the module's race story).
            waiting = await session.scalar(_finals_receiving(upload_id).limit(1))
            if waiting is not None:  # raising rolls the termination back
                raise Conflict(
                    f"partial upload belongs to final upload {waiting}, not assembled yet"
                )
            if outbox:
                session.add(outbox_row(EventType.POST_TERMINATE, upload, upload.updated_at))
            return upload

    async def expire(self, upload_id: str, now: datetime, *, outbox: bool = False) -> Upload:
        return await self._transition(
            upload_id,
            (_receiving(), UploadRow.expires_at <= now),
            "upload was extended or ended meanwhile",
            event=EventType.POST_EXPIRE if outbox else None,
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
            (_receiving(), UploadRow.upload_offset == expected, *_fenced(fence)),
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
        guard: _Growth | None = None,
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
        guard: _Growth | None = None,
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

    async def add_final(
        self, final: Upload, quota: Quota | None = None, *, outbox: bool = False
    ) -> None:
        async with self._session(begin=True) as session:
            if quota is not None and final.owner is not None:
                await _check_new(session, final, quota)
            row = _to_row(final)
            session.add(row)
            await session.flush()  # SQLite: the insert takes the write lock before parts are read
            for position, part in enumerate(final.parts):
                # FOR SHARE (PostgreSQL): the part cannot end until this commits, and a part that
                # ended meanwhile is re-read as it is now; finals naming one part do not wait
                live = await session.scalar(
                    select(UploadRow.id)
                    .where(UploadRow.id == part, UploadRow.concat == "partial", _in(LIVE_STATES))
                    .with_for_update(read=True)
                )
                if live is None:
                    raise Conflict(f"partial upload {part} ended meanwhile")
                session.add(UploadPartRow(final_id=final.id, position=position, part_id=part))
            if outbox:
                session.add(outbox_row(EventType.POST_CREATE, _to_upload(row), final.created_at))

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


async def _serialise(session: AsyncSession, owner: str | None) -> None:
    """Until this transaction ends, no other quota-checked transition of ``owner`` (in any
    process) reads the owner's usage: the check and the write are one step. On SQLite the write
    lock is taken before anything is read (a read transaction that later writes would be refused
    at once if another connection wrote meanwhile), so ``owner`` may be None there: it is looked
    up after."""
    if session.get_bind().dialect.name == "postgresql":
        if owner is not None:
            key = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big", signed=True)
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:cls, :key)"),
                {"cls": QUOTA_LOCK_CLASS, "key": key},
            )
        return
    # SQLite: a write that changes nothing opens the write transaction (one writer at a time,
    # across processes) before the usage is read
    await session.execute(update(UploadRow).where(UploadRow.id == "").values(owner=None))


async def _check_new(session: AsyncSession, upload: Upload, quota: Quota) -> None:
    """``quota`` admits ``upload`` (not inserted yet) beside what its owner holds."""
    assert upload.owner is not None
    await _serialise(session, upload.owner)
    receiving = upload.state is UploadState.RECEIVING
    quota.check(
        await _usage(session, upload.owner),
        uploads=1 if receiving else 0,
        size=upload.length or 0,
        deferred=receiving and upload.length is None,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Growth:
    """A transition that brings ``upload_id``'s share of its owner's usage, while its length is
    unknown, to ``to`` bytes (a new committed offset, a declared or an assembled length) from
    ``since`` (the committed offset it expects; None: the row's): the byte quota must admit the
    difference. An upload of known length counted its length already and grows nothing."""

    upload_id: str
    quota: Quota
    to: int
    since: int | None = None

    async def check(self, session: AsyncSession) -> None:
        postgres = session.get_bind().dialect.name == "postgresql"
        if not postgres:
            await _serialise(session, None)
        found = (
            await session.execute(
                select(UploadRow.owner, UploadRow.length, UploadRow.upload_offset).where(
                    UploadRow.id == self.upload_id
                )
            )
        ).one_or_none()
        if found is None or found.owner is None or found.length is not None:
            return  # no such upload (the transition says so), an open service's, or known
        size = self.to - (found.upload_offset if self.since is None else self.since)
        if size <= 0:
            return
        if postgres:
            await _serialise(session, found.owner)
        self.quota.check(await _usage(session, found.owner), size=size)


def _growth(
    upload_id: str, quota: Quota | None, to: int, *, since: int | None = None
) -> _Growth | None:
    """The quota check of a transition that may grow usage (None: no byte quota to check)."""
    if quota is None or quota.bytes is None:
        return None
    return _Growth(upload_id, quota, to, since)


async def _usage(session: AsyncSession, owner: str) -> Usage:
    unfinished = func.count().filter(UploadRow.state == UploadState.RECEIVING.value)
    stored = func.coalesce(
        func.sum(
            case((UploadRow.length.is_(None), UploadRow.upload_offset), else_=UploadRow.length)
        ),
        0,
    )
    result = await session.execute(
        select(unfinished, stored).where(UploadRow.owner == owner, _in(LIVE_STATES))
    )
    count, total = result.one()
    return Usage(unfinished=int(count), bytes=int(total))


async def _one(session: AsyncSession, statement: Update, conflict: str) -> Upload:
    """Run a conditional update of one row; the row as it is now, ``Conflict`` if none matched."""
    result = await session.execute(
        statement.returning(UploadRow), execution_options={"synchronize_session": False}
    )
    row = result.scalar_one_or_none()
    if row is None:
        raise Conflict(conflict)
    return (await _loaded(session, [row]))[0]


async def _loaded(session: AsyncSession, rows: Sequence[UploadRow]) -> list[Upload]:
    """The rows as uploads, each partial upload with its live finals, oldest first (one more
    query, only when a partial upload is among the rows)."""
    part_ids = [row.id for row in rows if row.concat == "partial"]
    finals: dict[str, list[str]] = {}
    if part_ids:
        statement = (
            select(UploadPartRow.part_id, _FINAL.id)
            .join(_FINAL, _FINAL.id == UploadPartRow.final_id)
            .where(
                UploadPartRow.part_id.in_(part_ids),
                _FINAL.state.in_([state.value for state in LIVE_STATES]),
            )
            .order_by(_FINAL.created_at, _FINAL.id)
        )
        for part_id, final_id in await session.execute(statement):
            finals.setdefault(part_id, []).append(final_id)
    return [_to_upload(row, tuple(finals.get(row.id, ()))) for row in rows]


def _finals_receiving(part_id: str) -> Select[str]:
    """The finals still receiving (waiting for or assembling from their parts) that name
    ``part_id``, oldest first."""
    return (
        select(_FINAL.id)
        .join(UploadPartRow, UploadPartRow.final_id == _FINAL.id)
        .where(UploadPartRow.part_id == part_id, _FINAL.state == UploadState.RECEIVING.value)
        .order_by(_FINAL.created_at, _FINAL.id)
    )


def _receiving() -> ColumnElement[bool]:
    return UploadRow.state == UploadState.RECEIVING.value


def _fenced(fence: int | None) -> tuple[ColumnElement[bool], ...]:
    """A commit by a holder whose fencing token is no longer the row's latest is refused."""
    return () if fence is None else (UploadRow.fence == fence,)


def _in(states: tuple[UploadState, ...]) -> ColumnElement[bool]:
    return UploadRow.state.in_([state.value for state in states])
