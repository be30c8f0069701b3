"""The upload repository over SQLAlchemy 2.0, each method one transaction that ``Transactions``
runs (SQLite through pysqlite in a worker thread, PostgreSQL through asyncpg): its transitions.
Each is one conditional ``UPDATE ... RETURNING`` (compare-and-set); a driver failure of any kind
leaves as ``Unavailable`` (503, ``Retry-After``), except a full disk under the database, which
is ``StorageFull`` (507). Beside it: the table of transitions it shares with the memory
repository (``transitions``), the row format (``rows``), the listings (``listing``, its base),
the owner's quota (``quota``) and the parts of final uploads with their race story (``parts``).

Crash story: every transition, with its quota check and its outbox event, is one transaction. A
kill -9 before the commit leaves the row as it was and no event; after it, the new state and its
event are both durable. A transition is never half applied, and an event is never written for a
state change that did not happen (nor lost for one that did).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial

from sqlalchemy import (
    ColumnElement,
    Connection,
    Update,
    bindparam,
    delete,
    false,
    or_,
    select,
    update,
)

from upload_service.db import transitions
from upload_service.db.base import Quota, Usage
from upload_service.db.listing import SqlListing
from upload_service.db.models import UploadPartRow
from upload_service.db.outbox import INSERT_EVENT, outbox_row
from upload_service.db.parts import finals_receiving, link_parts, loaded
from upload_service.db.quota import Growth, check_new, growth, usage_of
from upload_service.db.rows import INSERT_UPLOAD, UPLOADS, in_states, to_row, video_json
from upload_service.db.session import Transactions
from upload_service.db.tickets import SqlTickets, give_back, use_ticket
from upload_service.errors import Conflict
from upload_service.outbox import EventType
from upload_service.uploads import Upload, UploadState, VideoInfo

# one row by its id
_BY_ID = select(UPLOADS).where(UPLOADS.c.id == bindparam("upload_id"))


class SqlUploadRepository(SqlListing, SqlTickets):
    """``UploadRepository`` and ``TicketRepository`` over ``Transactions`` (each method one
    transaction), with the ``Outbox`` capability: with ``events`` on, the transitions that
    report events insert them in their own transaction."""

    def __init__(self, sessions: Transactions, *, events: bool = False) -> None:
        super().__init__(sessions)
        self._reporting = events

    async def add(self, upload: Upload, quota: Quota | None = None) -> None:
        await self._sessions.run(partial(self._add, upload, quota), begin=True)

    def _add(self, upload: Upload, quota: Quota | None, connection: Connection) -> None:
        if quota is not None and upload.owner is not None:
            check_new(connection, upload, quota)
        if upload.ticket is not None:
            use_ticket(connection, upload.ticket, upload.created_at)
        connection.execute(INSERT_UPLOAD, to_row(upload))
        if self._reporting:
            connection.execute(
                INSERT_EVENT, outbox_row(EventType.POST_CREATE, upload, upload.created_at)
            )

    async def usage(self, owner: str) -> Usage:
        return await self._sessions.run(partial(usage_of, owner=owner))

    async def get(self, upload_id: str) -> Upload | None:
        return await self._sessions.run(partial(_get, upload_id))

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        return await self._sessions.run(partial(_get_many, upload_ids))

    # -- transitions, each a compare-and-set (their table: ``transitions``) ---------------------

    async def claim(self, upload_id: str, token: int) -> Upload | None:
        try:
            return await self._transition(
                upload_id, transitions.CLAIM, {"fence_at_most": token}, fence=token
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
            transitions.ADVANCE,
            _offset_is(expected, fence),
            now=now,
            guard=growth(upload_id, quota, offset, since=expected),
            upload_offset=offset,
            received=offset,
            expires_at=expires_at,
        )

    async def declare_length(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        return await self._transition(
            upload_id,
            transitions.DECLARE_LENGTH,
            {"length_unknown": None, "offset_at_most": length},
            now=now,
            guard=growth(upload_id, quota, length),
            length=length,
        )

    async def complete(self, upload_id: str, now: datetime) -> Upload:
        return await self._transition(
            upload_id,
            transitions.COMPLETE,
            {"length_reached": None},
            now=now,
            completed_at=now,
            expires_at=None,
        )

    async def assembled(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        return await self._transition(
            upload_id,
            transitions.ASSEMBLED,
            {"final": None},
            now=now,
            guard=growth(upload_id, quota, length),
            length=length,
            upload_offset=length,
            received=length,
            completed_at=now,
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
            upload_id, transitions.MARK_READY, now=now, sha256=sha256, video=video_json(video)
        )

    async def fail(
        self,
        upload_id: str,
        reason: str,
        now: datetime,
        *,
        only_from: tuple[UploadState, ...],
        give_back: bool = False,
    ) -> Upload:
        return await self._transition(
            upload_id,
            transitions.FAIL,
            now=now,
            sources=only_from,
            after=_giving_back if give_back else None,
            failure=reason,
        )

    async def terminate(self, upload_id: str, now: datetime, *, give_back: bool = False) -> Upload:
        def after(connection: Connection, upload: Upload) -> None:
            _not_awaited(connection, upload)
            if give_back:
                _giving_back(connection, upload)

        return await self._transition(upload_id, transitions.TERMINATE, now=now, after=after)

    async def expire(self, upload_id: str, now: datetime) -> Upload:
        return await self._transition(upload_id, transitions.EXPIRE, {"expires_by": now}, now=now)

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
            transitions.FORCE_OFFSET,
            _offset_is(expected, fence),
            now=now,
            upload_offset=offset,
            received=offset,
        )

    async def _transition(
        self,
        upload_id: str,
        transition: transitions.Transition,
        where: Mapping[str, object] | None = None,
        *,
        now: datetime | None = None,
        sources: tuple[UploadState, ...] | None = None,
        guard: Growth | None = None,
        after: Callable[[Connection, Upload], None] | None = None,
        **values: object,
    ) -> Upload:
        """One conditional update of one row, from the transition's states (or ``sources``) and
        under the named conditions ``where`` (each with its value, see ``_CONDITIONS``);
        ``Conflict`` when they no longer hold. With ``now``, the row's update time, and the
        state's when the transition moves it. With ``guard``, the owner's quota is checked
        first; ``after`` runs after the update, with the row as it left it (raising rolls it
        back); the event, with events on, is inserted last: all in one transaction. The
        statement is made once for each shape (``_statement``); the values are bound."""
        where = where or {}
        states = transition.sources if sources is None else sources
        statement = _statement(
            transition, states, tuple(sorted(where)), now is not None, tuple(sorted(values))
        )
        bound = {f"c_{name}": value for name, value in where.items()}
        bound.update({f"b_{column}": value for column, value in values.items()})
        bound.update(b_id=upload_id, b_now=now)

        def work(connection: Connection) -> Upload:
            if guard is not None:
                guard.check(connection)
            upload = _one(connection, statement, bound, transition.conflict)
            if after is not None:
                after(connection, upload)
            if self._reporting and transition.event is not None:
                connection.execute(
                    INSERT_EVENT, outbox_row(transition.event, upload, upload.updated_at)
                )
            return upload

        return await self._sessions.run(work, begin=True)

    # -- not state changes ----------------------------------------------------------------------

    async def set_received(self, upload_id: str, received: int) -> None:
        values = {"b_id": upload_id, "b_received": received}
        await self._sessions.run(partial(_execute, _SET_RECEIVED, values), begin=True)

    async def add_final(self, final: Upload, quota: Quota | None = None) -> None:
        await self._sessions.run(partial(self._add_final, final, quota), begin=True)

    def _add_final(self, final: Upload, quota: Quota | None, connection: Connection) -> None:
        if quota is not None and final.owner is not None:
            check_new(connection, final, quota)
        if final.ticket is not None:
            use_ticket(connection, final.ticket, final.created_at)
        # first: on SQLite the insert takes the write lock before the parts are read
        connection.execute(INSERT_UPLOAD, to_row(final))
        link_parts(connection, final)
        if self._reporting:
            connection.execute(
                INSERT_EVENT, outbox_row(EventType.POST_CREATE, final, final.created_at)
            )

    async def forget(self, upload_id: str) -> None:
        await self._sessions.run(partial(_forget, upload_id), begin=True)

    async def ping(self) -> None:
        await self._sessions.run(partial(_execute, _PING, {}), begin=True)


def _get(upload_id: str, connection: Connection) -> Upload | None:
    row = connection.execute(_BY_ID, {"upload_id": upload_id}).first()
    return None if row is None else loaded(connection, [row])[0]


def _get_many(upload_ids: tuple[str, ...], connection: Connection) -> dict[str, Upload]:
    rows = connection.execute(select(UPLOADS).where(UPLOADS.c.id.in_(upload_ids))).all()
    return {upload.id: upload for upload in loaded(connection, rows)}


def _execute(statement: Update, values: dict[str, object], connection: Connection) -> None:
    connection.execute(statement, values)


def _forget(upload_id: str, connection: Connection) -> None:
    connection.execute(delete(UPLOADS).where(UPLOADS.c.id == upload_id))
    connection.execute(
        delete(UploadPartRow).where(
            or_(UploadPartRow.final_id == upload_id, UploadPartRow.part_id == upload_id)
        )
    )


def _one(
    connection: Connection, statement: Update, values: dict[str, object], conflict: str
) -> Upload:
    """Run a conditional update of one row (``RETURNING`` it); the row as it is now,
    ``Conflict`` if none matched."""
    row = connection.execute(statement, values).one_or_none()
    if row is None:
        raise Conflict(conflict)
    return loaded(connection, [row])[0]


def _giving_back(connection: Connection, upload: Upload) -> None:
    """``fail`` or ``terminate`` with ``give_back``: the upload's ticket gets its use back."""
    if upload.ticket is not None:
        give_back(connection, upload.ticket)


def _not_awaited(connection: Connection, upload: Upload) -> None:
    """``terminate``: no final still receiving names the upload if it is a part (only a partial
    upload can be). Read after the update, which holds the row (PostgreSQL) or the database
    (SQLite) until the commit: a final inserted concurrently committed before it (and is seen
    here) or finds this part terminated (see the race story in ``parts``)."""
    if not upload.is_partial:
        return
    waiting = connection.scalar(finals_receiving(upload.id).limit(1))
    if waiting is not None:
        raise transitions.part_awaited(waiting)


# The conditions a transition may add to its states, by name, each value bound as ``c_<name>``
# (those that compare two columns take none; the value passed is ignored).
_CONDITIONS: dict[str, ColumnElement[bool]] = {
    "offset_is": UPLOADS.c.upload_offset == bindparam("c_offset_is"),
    "offset_at_most": UPLOADS.c.upload_offset <= bindparam("c_offset_at_most"),
    "fence_is": UPLOADS.c.fence == bindparam("c_fence_is"),
    "fence_at_most": UPLOADS.c.fence <= bindparam("c_fence_at_most"),
    "expires_by": UPLOADS.c.expires_at <= bindparam("c_expires_by"),
    "length_unknown": UPLOADS.c.length.is_(None),
    "length_reached": UPLOADS.c.length == UPLOADS.c.upload_offset,
    "final": UPLOADS.c.concat == "final",
}


@functools.cache
def _statement(
    transition: transitions.Transition,
    states: tuple[UploadState, ...] | None,
    conditions: tuple[str, ...],
    timed: bool,
    columns: tuple[str, ...],
) -> Update:
    """A transition's conditional update (``RETURNING`` the row), made once for each shape:
    the row by ``b_id``, the states, the named conditions, and the columns it sets, each bound
    as ``b_<column>`` (with ``timed``, the update time and the state's as ``b_now``). Statements
    made once are compiled and keyed for SQLAlchemy's statement cache once; a statement made per
    call cost a DELETE about a tenth of its CPU."""
    where = [UPLOADS.c.id == bindparam("b_id")]
    if states is not None:
        where.append(in_states(states))
    where.extend(_CONDITIONS[name] for name in conditions)
    values: dict[str, object] = {column: bindparam(f"b_{column}") for column in columns}
    if timed:
        values["updated_at"] = bindparam("b_now")
    if transition.target is not None:
        values["state"] = transition.target.value
        if timed:
            values["state_changed_at"] = bindparam("b_now")
    return update(UPLOADS).where(*where).values(values).returning(*UPLOADS.c)


def _offset_is(expected: int, fence: int | None) -> dict[str, object]:
    """The offset the commit expects; a commit by a holder whose fencing token is no longer the
    row's latest is refused."""
    return {"offset_is": expected} if fence is None else {"offset_is": expected, "fence_is": fence}


_SET_RECEIVED = (
    update(UPLOADS)
    .where(UPLOADS.c.id == bindparam("b_id"))
    .values(received=bindparam("b_received"))
)
# A write that changes nothing: it needs the write lock (a SQLite database locked by another
# connection is not ready, though it may still be read) and a live connection.
_PING = update(UPLOADS).where(false()).values(fence=UPLOADS.c.fence)
