"""The outbox in memory (``upload_service.outbox``): the delivery side of ``MemoryUploadRepository``,
whose transitions write the events, as ``SqlOutbox`` is of the SQL repository.

For tests and protocol rules. Its crash story is plain: every event, pending or not, is lost with
the process. Each method runs to its end without yielding to the event loop before its change is
made, so a claim or an outcome is one step, as the SQL one's transaction is.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import anyio.lowlevel

from upload_service.outbox import (
    DeliveryStatus,
    EventType,
    FailureReason,
    OutboxEvent,
    upload_snapshot,
)
from upload_service.uploads import Upload

# An outcome's change to the stored event (its claim is let go besides).
_Change = Callable[[OutboxEvent], OutboxEvent]


def new_event(event: EventType, upload: Upload, at: datetime) -> OutboxEvent:
    """A new event about ``upload`` (as the transition left it), due at once."""
    return OutboxEvent(
        id=uuid.uuid4().hex,
        type=event,
        upload_id=upload.id,
        upload=upload_snapshot(upload),
        created_at=at,
        next_attempt_at=at,
    )


def _copy(event: OutboxEvent) -> OutboxEvent:
    # the snapshot is a dict: nobody outside holds the stored one
    return replace(event, upload=copy.deepcopy(event.upload))


class MemoryOutbox:
    """``Outbox`` over a list of events in the order they were written (a base of the memory
    repository, whose transitions append to it)."""

    def __init__(self) -> None:
        self._events: list[OutboxEvent] = []  # ``claim``: the event's latest claim, if any
        self._leases: dict[str, datetime] = {}  # event id -> until when its claim holds

    def _write(self, event: EventType, upload: Upload, at: datetime) -> None:
        self._events.append(new_event(event, upload, at))

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxEvent]:
        token = uuid.uuid4().hex
        claimed: list[OutboxEvent] = []
        waiting: set[str] = set()  # uploads with an earlier pending event
        for index, event in enumerate(self._events):
            if len(claimed) >= limit:
                break
            if event.status is not DeliveryStatus.PENDING:
                continue
            first = event.upload_id not in waiting
            waiting.add(event.upload_id)
            lease = self._leases.get(event.id)
            due = event.next_attempt_at is not None and event.next_attempt_at <= now
            if first and due and (lease is None or lease < now):
                self._events[index] = replace(event, claim=token)
                self._leases[event.id] = lease_until
                claimed.append(_copy(self._events[index]))
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return claimed

    async def delivered(self, event: OutboxEvent, now: datetime) -> bool:
        return await self._outcome(
            event,
            lambda stored: replace(
                stored,
                status=DeliveryStatus.DELIVERED,
                attempts=stored.attempts + 1,
                delivered_at=now,
                last_error=None,
            ),
        )

    async def retry(self, event: OutboxEvent, error: FailureReason, at: datetime) -> bool:
        return await self._outcome(
            event,
            lambda stored: replace(
                stored, attempts=stored.attempts + 1, last_error=error, next_attempt_at=at
            ),
        )

    async def give_up(self, event: OutboxEvent, error: FailureReason, now: datetime) -> bool:
        return await self._outcome(
            event,
            lambda stored: replace(
                stored,
                status=DeliveryStatus.FAILED,
                attempts=stored.attempts + 1,
                last_error=error,
            ),
        )

    async def _outcome(self, event: OutboxEvent, change: _Change) -> bool:
        if event.claim is None:
            raise ValueError("only a claimed event has an outcome")
        applied = False
        for index, stored in enumerate(self._events):
            if (
                stored.id == event.id
                and stored.claim == event.claim
                and stored.status is DeliveryStatus.PENDING
            ):
                self._events[index] = replace(change(stored), claim=None)
                self._leases.pop(stored.id, None)
                applied = True
                break
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return applied

    async def events_of(self, upload_id: str) -> list[OutboxEvent]:
        events = [_copy(event) for event in self._events if event.upload_id == upload_id]
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return events

    async def prune(self, before: datetime) -> int:
        kept = [
            event
            for event in self._events
            if event.status is DeliveryStatus.PENDING or event.created_at >= before
        ]
        pruned = len(self._events) - len(kept)
        gone = {event.id for event in self._events} - {event.id for event in kept}
        self._events = kept
        for event_id in gone:
            self._leases.pop(event_id, None)
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return pruned
