"""The upload repository in memory: ``UploadRepository`` with the ``Outbox`` capability, for tests
and the protocol's rules (the handler's tests run on it: no database, no disk).

It keeps the SQL repository's semantics to the letter, reading the same table of transitions
(``transitions``), and the contract suite (``tests/test_contract_repository.py``) runs over
both: every transition is a compare-and-set raising ``Conflict`` and changing nothing when its
condition no longer holds; parts of finals are kept as ``upload_parts`` rows are (a part may be
in several finals; ``forget`` drops its records); quotas count ``Usage`` as the SQL query does
(and check a new upload by the same ``Quota.check_new``); an event is written with its state
change or not at all. Each method checks and changes its state without yielding to the event
loop, so it is one step, as a transaction is; an answer then yields once (shielded from
cancellation, as the SQL sessions are), as a round trip to a database would, so racing tasks
interleave between calls.

Uploads are frozen, and stored and handed out as copies: a caller never shares the stored
metadata or event payloads.

Crash story: there is none to tell. Everything, uploads, offsets and events, lives in this
process and is lost with it; a restart starts empty. Nothing durable may ever rely on it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

import anyio.lowlevel

from upload_service.db import transitions
from upload_service.db.base import Quota, UploadQuery, Usage
from upload_service.db.memory_outbox import MemoryOutbox
from upload_service.db.memory_tickets import MemoryTickets, utc, utc_or_none
from upload_service.errors import Conflict, Unavailable
from upload_service.outbox import EventType
from upload_service.uploads import ENDED_STATES, LIVE_STATES, Upload, UploadState, VideoInfo

# What a transition expects of the row it changes (the SQL one's WHERE clause).
_Condition = Callable[[Upload], bool]
_T = TypeVar("_T")


def _stored(upload: Upload) -> Upload:
    """``upload`` as a row keeps it: its own metadata, moments in UTC, no finals (they are read
    from the parts' records)."""
    return replace(
        upload,
        metadata=dict(upload.metadata),
        created_at=utc(upload.created_at),
        updated_at=utc(upload.updated_at),
        expires_at=utc_or_none(upload.expires_at),
        completed_at=utc_or_none(upload.completed_at),
        state_changed_at=utc(upload.state_changed_at or upload.created_at),
        finals=(),
    )


def _receiving(upload: Upload) -> bool:
    return upload.state is UploadState.RECEIVING


def _fenced(fence: int | None) -> _Condition:
    """A commit by a holder whose fencing token is no longer the row's latest is refused."""
    return lambda upload: fence is None or upload.fence == fence


class MemoryUploadRepository(MemoryOutbox, MemoryTickets):
    """``UploadRepository`` over dictionaries, with the ``Outbox`` capability: with ``events``
    on, the transitions that report events write them in the same step."""

    def __init__(self, *, events: bool = False) -> None:
        MemoryOutbox.__init__(self)
        MemoryTickets.__init__(self)
        self._reporting = events
        self._rows: dict[str, Upload] = {}
        # upload_parts: final id -> {position: part id}
        self._parts: dict[str, dict[int, str]] = {}

    def sharing(self, *, events: bool) -> MemoryUploadRepository:
        """A repository over this one's state (uploads, parts, events) with ``events`` on or
        off: as two processes configured apart on one database."""
        other = copy.copy(self)
        other._reporting = events
        return other

    # -- reading ----------------------------------------------------------------------------------

    def _read(self, row: Upload) -> Upload:
        """The row as an upload: its own copy of the metadata, and for a partial upload its live
        finals, oldest first."""
        finals: tuple[str, ...] = ()
        if row.is_partial:
            finals = tuple(final.id for final in self._finals_of(row.id, LIVE_STATES))
        return replace(
            row,
            metadata=dict(row.metadata),
            received=max(row.received, row.offset),
            finals=finals,
        )

    def _finals_of(self, part_id: str, states: tuple[UploadState, ...]) -> list[Upload]:
        """The finals in one of ``states`` whose records name ``part_id``, oldest first."""
        finals = [
            self._rows[final_id]
            for final_id, parts in self._parts.items()
            if part_id in parts.values()
            and final_id in self._rows
            and self._rows[final_id].state in states
        ]
        return sorted(finals, key=lambda final: (final.created_at, final.id))

    async def _answer(self, value: _T) -> _T:
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return value

    async def get(self, upload_id: str) -> Upload | None:
        row = self._rows.get(upload_id)
        return await self._answer(None if row is None else self._read(row))

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        found = {key: self._read(self._rows[key]) for key in upload_ids if key in self._rows}
        return await self._answer(found)

    async def _list(self, condition: _Condition) -> list[Upload]:
        return await self._answer(
            [self._read(row) for row in self._rows.values() if condition(row)]
        )

    async def list_by_state(self, state: UploadState) -> list[Upload]:
        return await self._list(lambda row: row.state is state)

    async def list_page(self, query: UploadQuery) -> list[Upload]:
        after = None if query.after is None else (utc(query.after.created_at), query.after.id)
        since, until = utc_or_none(query.created_after), utc_or_none(query.created_before)

        def matches(row: Upload) -> bool:
            return (
                (query.owner is None or row.owner == query.owner)
                and (not query.states or row.state in query.states)
                and (query.direct is None or row.direct == query.direct)
                and (since is None or row.created_at >= since)
                and (until is None or row.created_at < until)
                and (after is None or (row.created_at, row.id) < after)
            )

        rows = sorted(
            (row for row in self._rows.values() if matches(row)),
            key=lambda row: (row.created_at, row.id),
            reverse=True,
        )
        return await self._answer([self._read(row) for row in rows[: query.limit]])

    async def list_expired(self, now: datetime) -> list[Upload]:
        return await self._list(lambda row: _receiving(row) and _expired(row, now))

    async def list_finals_waiting(self) -> list[Upload]:
        return await self._list(lambda row: _receiving(row) and row.is_final)

    async def list_ended(self, before: datetime) -> list[Upload]:
        def ended(row: Upload) -> bool:
            return (
                row.state in ENDED_STATES
                and row.state_changed_at is not None
                and row.state_changed_at < before
                and not self._finals_of(row.id, (UploadState.RECEIVING,))
            )

        return await self._list(ended)

    async def usage(self, owner: str) -> Usage:
        return await self._answer(self._usage(owner))

    def _usage(self, owner: str) -> Usage:
        live = [
            row for row in self._rows.values() if row.owner == owner and row.state in LIVE_STATES
        ]
        return Usage(
            unfinished=sum(1 for row in live if _receiving(row)),
            bytes=sum(row.offset if row.length is None else row.length for row in live),
        )

    # -- inserting --------------------------------------------------------------------------------

    def _check_new(self, upload: Upload, quota: Quota | None) -> None:
        """``quota`` admits ``upload`` beside what its owner holds, and its id is new."""
        if quota is not None and upload.owner is not None:
            quota.check_new(self._usage(upload.owner), upload)
        if upload.id in self._rows:  # what the SQL insert's integrity error leaves as
            raise Unavailable(f"database unavailable: upload {upload.id} exists already")

    # -- tickets (the rest is MemoryTickets') --------------------------------------------------

    async def ticket_uploads(self, ticket_id: str) -> tuple[str, ...]:
        made = sorted(
            (row for row in self._rows.values() if row.ticket == ticket_id),
            key=lambda row: (row.created_at, row.id),
        )
        return await self._answer(tuple(row.id for row in made))

    def _insert(self, upload: Upload) -> None:
        if upload.ticket is not None:
            self._use_ticket(upload.ticket, upload.created_at)
        row = _stored(upload)
        self._rows[row.id] = row
        if self._reporting:
            self._write(EventType.POST_CREATE, self._read(row), row.created_at)

    async def add(self, upload: Upload, quota: Quota | None = None) -> None:
        self._check_new(upload, quota)
        self._insert(upload)
        await self._answer(None)

    async def add_final(self, final: Upload, quota: Quota | None = None) -> None:
        self._check_new(final, quota)
        for part in final.parts:
            row = self._rows.get(part)
            if row is None or not row.is_partial or row.state not in LIVE_STATES:
                raise transitions.part_ended(part)
        self._insert(final)
        self._parts[final.id] = dict(enumerate(final.parts))
        await self._answer(None)

    # -- transitions, each a compare-and-set ------------------------------------------------------

    def _growth(self, upload_id: str, quota: Quota | None, to: int, since: int | None) -> None:
        """The byte quota admits bringing ``upload_id``'s share of its owner's usage, while its
        length is unknown, to ``to`` from ``since`` (None: its offset) (as the SQL ``_Growth``)."""
        row = self._rows.get(upload_id)
        if quota is None or quota.bytes is None or row is None:
            return
        if row.owner is None or row.length is not None:
            return
        size = to - (row.offset if since is None else since)
        if size > 0:
            quota.check(self._usage(row.owner), size=size)

    async def _transition(
        self,
        upload_id: str,
        transition: transitions.Transition,
        conditions: tuple[_Condition, ...] = (),
        *,
        now: datetime | None = None,
        sources: tuple[UploadState, ...] | None = None,
        give_back: bool = False,
        **values: object,
    ) -> Upload:
        """One compare-and-set of one row, as the SQL one's (see there): ``Conflict``, nothing
        changed, unless it is in one of the transition's states (or ``sources``) and every
        condition holds; the event, with events on, and a ticket's use given back
        (``give_back``), in the same step."""
        row = self._rows.get(upload_id)
        states = transition.sources if sources is None else sources
        if states is not None:
            conditions = (lambda row: row.state in states, *conditions)
        if row is None or not all(condition(row) for condition in conditions):
            raise Conflict(transition.conflict)
        changed = _stored(replace(row, **transition.changes(now), **values))  # type: ignore[arg-type]
        self._rows[upload_id] = changed
        upload = self._read(changed)
        if give_back:
            self._give_back(upload)
        if self._reporting and transition.event is not None:
            self._write(transition.event, upload, upload.updated_at)
        return await self._answer(upload)

    async def claim(self, upload_id: str, token: int) -> Upload | None:
        if upload_id not in self._rows:
            return await self._answer(None)
        return await self._transition(
            upload_id, transitions.CLAIM, (lambda row: row.fence <= token,), fence=token
        )

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
        self._growth(upload_id, quota, offset, since=expected)
        return await self._transition(
            upload_id,
            transitions.ADVANCE,
            (lambda row: row.offset == expected, _fenced(fence)),
            now=now,
            offset=offset,
            received=offset,
            expires_at=expires_at,
        )

    async def declare_length(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        self._growth(upload_id, quota, length, since=None)
        return await self._transition(
            upload_id,
            transitions.DECLARE_LENGTH,
            (lambda row: row.length is None and row.offset <= length,),
            now=now,
            length=length,
        )

    async def complete(self, upload_id: str, now: datetime) -> Upload:
        return await self._transition(
            upload_id,
            transitions.COMPLETE,
            (lambda row: row.length == row.offset,),
            now=now,
            completed_at=now,
            expires_at=None,
        )

    async def assembled(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        self._growth(upload_id, quota, length, since=None)
        return await self._transition(
            upload_id,
            transitions.ASSEMBLED,
            (lambda row: row.is_final,),
            now=now,
            length=length,
            offset=length,
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
            upload_id, transitions.MARK_READY, now=now, sha256=sha256, video=video
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
            give_back=give_back,
            failure=reason,
        )

    async def terminate(self, upload_id: str, now: datetime, *, give_back: bool = False) -> Upload:
        row = self._rows.get(upload_id)
        if row is not None and row.state in LIVE_STATES:  # else the transition's own Conflict
            waiting = self._finals_of(upload_id, (UploadState.RECEIVING,))
            if waiting:  # refused before anything changes: the final keeps its part
                raise transitions.part_awaited(waiting[0].id)
        return await self._transition(
            upload_id, transitions.TERMINATE, now=now, give_back=give_back
        )

    async def expire(self, upload_id: str, now: datetime) -> Upload:
        return await self._transition(
            upload_id, transitions.EXPIRE, (lambda row: _expired(row, now),), now=now
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
            transitions.FORCE_OFFSET,
            (lambda row: row.offset == expected, _fenced(fence)),
            now=now,
            offset=offset,
            received=offset,
        )

    # -- not state changes ------------------------------------------------------------------------

    async def set_received(self, upload_id: str, received: int) -> None:
        row = self._rows.get(upload_id)
        if row is not None:
            self._rows[upload_id] = replace(row, received=received)
        await self._answer(None)

    async def forget(self, upload_id: str) -> None:
        self._rows.pop(upload_id, None)
        self._parts.pop(upload_id, None)
        for parts in self._parts.values():
            for position in [key for key, part in parts.items() if part == upload_id]:
                del parts[position]
        await self._answer(None)

    async def ping(self) -> None:
        await self._answer(None)  # always ready: there is no database to lose


def _expired(row: Upload, now: datetime) -> bool:
    return row.expires_at is not None and row.expires_at <= now
