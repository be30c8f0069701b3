"""Delivering the outbox: a background task in every process claims due events under a lease and
hands each to the configured deliverers (the webhook URL, the post callable, or both, in that
order); the event is delivered once all of them took it.

At least once: an event counts as delivered only after every deliverer succeeded, and its
outcome is recorded afterwards, so a crash in between delivers it again (from whichever process
claims it next, once the lease ran out). The event id lets a receiver de-duplicate. A failed
attempt is retried after ``retry_delay * 2 ** (attempts - 1)`` seconds (at most an hour), and
after ``max_attempts`` the event is marked failed. The lease covers one delivery with every
timeout spent, so no two drainers deliver one event at the same time.

What a failed attempt leaves: the outbox keeps a fixed reason (``FailureReason``), which the
upload's owner sees; what the receiver or hook said is logged, with the event and upload ids,
for the operator alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio

from upload_service.errors import ServiceError
from upload_service.events import NO_EVENTS, Events
from upload_service.hooks.callables import call_hook
from upload_service.outbox import EventType, FailureReason, JsonValue, Outbox, OutboxEvent

logger = logging.getLogger("upload_service.hooks")

MAX_RETRY_DELAY = 3600.0
PRUNE_EVERY = 600.0  # seconds between prunes of old delivered and failed events
BATCH = 16  # events claimed (and delivered side by side) at a time
LEASE_GRACE = 30.0  # seconds of a lease beyond the deliverers' timeouts


class DeliveryFailed(Exception):
    """One attempt to deliver an event failed. ``reason`` is what the outbox keeps and the
    upload's owner may see; ``detail`` (the message, one line) is what the receiver or hook
    said, for the log only."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Deliverer(Protocol):
    timeout: float

    async def deliver(self, event: OutboxEvent) -> None:
        """Deliver ``event`` within ``timeout`` seconds or raise ``DeliveryFailed``."""
        ...


def event_body(event: OutboxEvent) -> dict[str, JsonValue]:
    """The JSON a webhook receives (and what the README documents)."""
    body: dict[str, JsonValue] = {
        "id": event.id,
        "type": event.type.value,
        "upload_id": event.upload_id,
        "created_at": event.created_at.isoformat(),
        "upload": event.upload,
    }
    if event.type is EventType.POST_FINISH:
        body["sha256"] = event.upload.get("sha256")
    return body


class PostCallable:
    """Call ``function(OutboxEvent)``; returning delivers it, raising fails the attempt."""

    def __init__(self, function: Callable[..., Any], *, timeout: float) -> None:
        self._function = function
        self.timeout = timeout

    async def deliver(self, event: OutboxEvent) -> None:
        try:
            await call_hook(self._function, event, self.timeout)
        except TimeoutError as exc:
            detail = f"the post hook took longer than {self.timeout:g} s"
            raise DeliveryFailed(FailureReason.HOOK_TIMEOUT, detail) from exc
        except Exception as exc:
            # the hook's own failure fails the attempt; its traceback is for the log only
            logger.exception(
                "the post hook failed on event %s", event.id, extra={"upload_id": event.upload_id}
            )
            detail = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
            raise DeliveryFailed(FailureReason.HOOK_ERROR, detail) from exc


class Drainer:
    def __init__(
        self,
        outbox: Outbox,
        deliverers: Sequence[Deliverer],
        *,
        clock: Callable[[], datetime],
        max_attempts: int,
        retry_delay: float,
        poll_interval: float,
        retention: float,
        events: Events = NO_EVENTS,
    ) -> None:
        self._outbox = outbox
        self._deliverers = tuple(deliverers)
        self._clock = clock
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._poll = poll_interval
        self._retention = timedelta(seconds=retention)
        self._events = events
        self.passes = 0  # the passes of ``run`` over the outbox done so far
        self.lease = timedelta(seconds=sum(d.timeout for d in deliverers) + LEASE_GRACE)

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next attempt, after ``attempts`` failed ones."""
        return float(min(self._retry_delay * 2.0 ** (attempts - 1), MAX_RETRY_DELAY))

    async def run(self) -> None:
        """Until cancelled: drain what is due, prune now and then, sleep ``poll_interval``."""
        pruned_at = 0.0
        while True:
            try:
                await self.drain()
                self.passes += 1
                if time.monotonic() - pruned_at >= PRUNE_EVERY:
                    pruned_at = time.monotonic()
                    await self._outbox.prune(self._clock() - self._retention)
            except ServiceError as exc:  # the database is unreachable: try again later
                logger.error("hook delivery paused: %s", exc.message)
            await anyio.sleep(self._poll)

    async def drain(self) -> int:
        """Deliver every event due now (one attempt each); returns how many were attempted."""
        attempted = 0
        while True:
            now = self._clock()
            batch = await self._outbox.claim_due(now, now + self.lease, BATCH)
            if not batch:
                return attempted
            async with anyio.create_task_group() as group:
                for event in batch:
                    group.start_soon(self._attempt, event)
            attempted += len(batch)

    async def _attempt(self, event: OutboxEvent) -> None:
        error: FailureReason | None = None
        attempts = event.attempts + 1
        for deliverer in self._deliverers:
            try:
                await deliverer.deliver(event)
            except DeliveryFailed as exc:
                error = exc.reason
                logger.warning(
                    "event %s (%s of upload %s), attempt %d: %s: %s",
                    event.id,
                    event.type.value,
                    event.upload_id,
                    attempts,
                    exc.reason.value,
                    exc.detail,
                    extra={"upload_id": event.upload_id, "event_id": event.id},
                )
                self._events.hook_delivery_failed(event.type.value, exc.reason.label)
                break
        now = self._clock()
        try:
            if error is None:
                recorded = await self._outbox.delivered(event, now)
                outcome = "delivered"
            elif attempts >= self._max_attempts:
                recorded = await self._outbox.give_up(event, error, now)
                outcome = "failed"
                logger.warning(
                    "event %s (%s of upload %s) failed after %d attempts: %s",
                    event.id,
                    event.type.value,
                    event.upload_id,
                    attempts,
                    error.value,
                    extra={"upload_id": event.upload_id, "event_id": event.id},
                )
            else:
                at = now + timedelta(seconds=self.retry_delay(attempts))
                recorded = await self._outbox.retry(event, error, at)
                outcome = "retried"
        except ServiceError as exc:
            logger.error("delivery of event %s not recorded: %s", event.id, exc.message)
            return  # its lease runs out and it is tried again
        if not recorded:
            logger.warning("event %s was claimed by another drainer meanwhile", event.id)
        self._events.hook_delivery(event.type.value, outcome)
