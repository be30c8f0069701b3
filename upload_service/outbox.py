"""The transactional outbox: events about uploads, written in the transaction of the state change
they report, and delivered afterwards (at least once) by whichever process claims them.

The state-changing methods (``add``, ``add_final``, ``mark_ready``, ``terminate``, ``expire``)
of a repository built with events on insert the event's row in their own transaction: the state
change and its event commit together or not at all. ``Outbox`` is the delivery side's capability:
claim due events under a lease, record the outcome of a delivery, list an upload's events, prune.

Crash story: an event row exists exactly when its state change committed. A drainer killed mid-
delivery leaves its claim to run out (``claimed_until``); the next drainer, in this process or any
other, claims the event again and delivers it again (at least once: receivers de-duplicate by the
event id). A drainer whose lease ran out cannot record an outcome over a newer claim (the claim
token no longer matches).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from upload_service.uploads import Upload

# JSON as the outbox stores it (the event's snapshot of its upload).
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


class EventType(StrEnum):
    POST_CREATE = "post-create"
    POST_FINISH = "post-finish"  # verified: the upload is ready, with its sha256
    POST_TERMINATE = "post-terminate"
    POST_EXPIRE = "post-expire"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # not delivered yet (maybe retried later, maybe being delivered now)
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed; never tried again


class FailureReason(StrEnum):
    """Why a delivery attempt failed, as the outbox keeps it and the JSON API shows it to the
    upload's owner: one fixed text per kind of failure. A receiver is the operator's
    infrastructure, so what it said (its body, a redirect's target, a stack trace) goes to the
    log with the event and upload ids, and never into the outbox."""

    REDIRECT = "receiver answered a redirect (3xx)"
    CLIENT_ERROR = "receiver answered 4xx"
    SERVER_ERROR = "receiver answered 5xx"
    OTHER_STATUS = "receiver answered a status that is not 2xx to 5xx"
    TIMEOUT = "receiver timed out"
    CONNECT = "could not connect to the receiver"
    TRANSPORT = "the connection to the receiver failed"
    HOOK_ERROR = "the hook raised an error"
    HOOK_TIMEOUT = "the hook timed out"
    # a stored error that is none of the above: written before errors were fixed texts, when
    # it held the receiver's words, which must not be shown
    UNKNOWN = "delivery failed"

    @classmethod
    def of_stored(cls, text: str | None) -> FailureReason | None:
        if text is None:
            return None
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN

    @property
    def label(self) -> str:
        """The metrics label: ``server_error``, ``timeout``, ..."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    id: str  # 32 hex digits: the receiver de-duplicates by it
    type: EventType
    upload_id: str
    upload: dict[str, JsonValue]  # the upload as it was when the event was written
    created_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_error: FailureReason | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    claim: str | None = None  # the token of the claim this record was returned by


def upload_snapshot(upload: Upload) -> dict[str, JsonValue]:
    """What an event says about its upload (metadata as UTF-8 text, as the JSON API shows it)."""

    def moment(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    metadata: dict[str, JsonValue] = {
        key: None if value is None else value.decode("utf-8", errors="replace")
        for key, value in upload.metadata.items()
    }
    return {
        "id": upload.id,
        "length": upload.length,
        "offset": upload.offset,
        "state": upload.state.value,
        "metadata": metadata,
        "created_at": moment(upload.created_at),
        "updated_at": moment(upload.updated_at),
        "expires_at": moment(upload.expires_at),
        "completed_at": moment(upload.completed_at),
        "failure": upload.failure,
        "sha256": upload.sha256,
        "concat": upload.concat,
        "parts": list(upload.parts),
        "finals": list(upload.finals),
        "final_id": latest_final(upload),
        "state_changed_at": moment(upload.state_changed_at),
        "owner": upload.owner,
        "ticket": upload.ticket,
        "direct": upload.direct,
        "video": None if upload.video is None else asdict(upload.video),
    }


def latest_final(upload: Upload) -> str | None:
    """``final_id`` as the JSON API and events show it: the most recent of a partial upload's
    ``finals`` (from when a partial could form one final only; ``finals`` lists them all)."""
    return upload.finals[-1] if upload.finals else None


@runtime_checkable
class Outbox(Protocol):
    """Delivery bookkeeping over the outbox rows. Every outcome is a compare-and-set on the
    claim token: it applies only while ``event.claim`` is still the event's latest claim, and
    returns False (changing nothing) otherwise. Driver failures raise ``Unavailable``."""

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxEvent]:
        """Claim up to ``limit`` pending events due at ``now`` that nobody holds (no claim, or a
        claim that ran out), until ``lease_until``, oldest first. Two callers, in any processes,
        never both claim one event while its lease runs.

        One upload's events go out in order: an event is not claimed while an earlier event of
        its upload is pending (held by another caller, or waiting for a retry), so a webhook
        never hears of ``post-finish`` before ``post-create``, and at most one event of an upload
        is out at a time."""
        ...

    async def delivered(self, event: OutboxEvent, now: datetime) -> bool:
        """The event was delivered: pending → delivered, one more attempt."""
        ...

    async def retry(self, event: OutboxEvent, error: FailureReason, at: datetime) -> bool:
        """A delivery attempt failed; try again at ``at`` (the claim is let go)."""
        ...

    async def give_up(self, event: OutboxEvent, error: FailureReason, now: datetime) -> bool:
        """The last delivery attempt failed: pending → failed."""
        ...

    async def events_of(self, upload_id: str) -> list[OutboxEvent]:
        """An upload's events, oldest first, with their delivery state."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete delivered and failed events written before ``before``; returns how many."""
        ...
