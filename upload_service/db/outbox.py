"""The outbox over SQLAlchemy (``upload_service.outbox``): the rows the repository's transitions
insert in their own transaction, and the delivery side's claims and outcomes.

A claim is one ``WITH due AS (pending, unclaimed, oldest first) UPDATE ... WHERE <still
unclaimed> RETURNING``: on PostgreSQL the inner select skips rows another drainer has locked
(``FOR UPDATE SKIP LOCKED``) and a row updated concurrently is re-checked against the outer
condition before it is claimed; SQLite runs one writer at a time. Either way an event is claimed
by one drainer until its lease runs out.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Delete,
    Row,
    Select,
    Table,
    Update,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import aliased

from upload_service.db.models import OutboxRow, aware
from upload_service.db.session import Transactions
from upload_service.outbox import (
    DeliveryStatus,
    EventType,
    FailureReason,
    JsonValue,
    OutboxEvent,
    upload_snapshot,
)
from upload_service.uploads import Upload

# the insert of one event's row (its values given at execution)
_EVENTS: Table = cast(Table, OutboxRow.__table__)
INSERT_EVENT = insert(_EVENTS)


def outbox_row(event: EventType, upload: Upload, at: datetime) -> dict[str, object]:
    """The values of the row of a new event about ``upload`` (as the transition left it), due
    at once (for ``INSERT_EVENT``)."""
    return dict(
        id=uuid.uuid4().hex,
        type=event.value,
        upload_id=upload.id,
        payload=upload_snapshot(upload),
        created_at=at,
        status=DeliveryStatus.PENDING.value,
        attempts=0,
        next_attempt_at=at,
    )


def _to_event(row: Row[Any]) -> OutboxEvent:
    created = aware(row.created_at)
    assert created is not None
    payload: dict[str, JsonValue] = row.payload
    return OutboxEvent(
        id=row.id,
        type=EventType(row.type),
        upload_id=row.upload_id,
        upload=payload,
        created_at=created,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        last_error=FailureReason.of_stored(row.last_error),
        next_attempt_at=aware(row.next_attempt_at),
        delivered_at=aware(row.delivered_at),
        claim=row.claim_token,
    )


class SqlOutbox:
    """``Outbox`` over ``Transactions`` (a base of the SQL repository, whose transitions write
    the rows)."""

    def __init__(self, sessions: Transactions) -> None:
        self._sessions = sessions

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxEvent]:
        token = uuid.uuid4().hex
        earlier = aliased(OutboxRow)
        first_of_its_upload = ~(
            select(earlier.id)
            .where(
                earlier.upload_id == OutboxRow.upload_id,
                earlier.seq < OutboxRow.seq,
                earlier.status == DeliveryStatus.PENDING.value,
            )
            .exists()
        )
        due = (
            select(OutboxRow.id)
            .where(
                _pending(),
                OutboxRow.next_attempt_at <= now,
                _unclaimed(now),
                first_of_its_upload,
            )
            .order_by(OutboxRow.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("due")  # evaluated once (as a subquery PostgreSQL may run it once per row)
        )
        statement = (
            update(OutboxRow)
            .where(OutboxRow.id.in_(select(due.c.id)), _pending(), _unclaimed(now))
            .values(claimed_until=lease_until, claim_token=token)
            .returning(*OutboxRow.__table__.c)
        )
        events = await self._sessions.run(partial(_claimed, statement), begin=True)
        return [event for _, event in sorted(events, key=lambda pair: pair[0])]

    async def delivered(self, event: OutboxEvent, now: datetime) -> bool:
        return await self._outcome(
            event,
            status=DeliveryStatus.DELIVERED.value,
            attempts=OutboxRow.attempts + 1,
            delivered_at=now,
            last_error=None,
        )

    async def retry(self, event: OutboxEvent, error: FailureReason, at: datetime) -> bool:
        return await self._outcome(
            event, attempts=OutboxRow.attempts + 1, last_error=error.value, next_attempt_at=at
        )

    async def give_up(self, event: OutboxEvent, error: FailureReason, now: datetime) -> bool:
        return await self._outcome(
            event,
            status=DeliveryStatus.FAILED.value,
            attempts=OutboxRow.attempts + 1,
            last_error=error.value,
        )

    async def _outcome(self, event: OutboxEvent, **values: object) -> bool:
        if event.claim is None:
            raise ValueError("only a claimed event has an outcome")
        statement: Update = (
            update(OutboxRow)
            .where(OutboxRow.id == event.id, OutboxRow.claim_token == event.claim, _pending())
            .values(claimed_until=None, claim_token=None, **values)
        )
        return await self._sessions.run(partial(_changed, statement), begin=True) == 1

    async def events_of(self, upload_id: str) -> list[OutboxEvent]:
        statement = (
            select(OutboxRow).where(OutboxRow.upload_id == upload_id).order_by(OutboxRow.seq)
        )
        return await self._sessions.run(partial(_events, statement))

    async def prune(self, before: datetime) -> int:
        statement = delete(OutboxRow).where(
            OutboxRow.status != DeliveryStatus.PENDING.value, OutboxRow.created_at < before
        )
        return await self._sessions.run(partial(_changed, statement), begin=True)


def _claimed(statement: Update, connection: Connection) -> list[tuple[int, OutboxEvent]]:
    rows = connection.execute(statement)
    return [(row.seq, _to_event(row)) for row in rows]


def _changed(statement: Update | Delete, connection: Connection) -> int:
    result = connection.execute(statement)
    return int(result.rowcount)


def _events(statement: Select[Any], connection: Connection) -> list[OutboxEvent]:
    return [_to_event(row) for row in connection.execute(statement)]


def _pending() -> ColumnElement[bool]:
    return OutboxRow.status == DeliveryStatus.PENDING.value


def _unclaimed(now: datetime) -> ColumnElement[bool]:
    return or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now)
