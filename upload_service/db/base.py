"""The contract of the upload repository: where upload state and the committed offset live.

The database is the source of truth for every upload. Each state change is one named transition,
applied as a compare-and-set from the state (or offset) it expects, so racing requests, replicas and
background tasks can never undo each other: a transition whose condition no longer holds raises
``Conflict`` and changes nothing. Implementations translate every driver failure at this boundary
into ``Unavailable`` (503 with ``Retry-After``), never a raw driver error and never a wrong offset.

Callers hold the upload's lock around transitions that depend on the stored bytes (``advance``,
``complete``, ``force_offset``); the repository itself takes no locks beyond its transactions.

Concatenation: a partial upload may be a part of any number of final uploads. Every upload read
back carries ``finals``: for a partial upload, the live final uploads that name it, oldest first.
``add_final`` and the part's ``terminate`` and ``expire`` are serialised on the part, so a final
still receiving never names a terminated part, and the part that ``expire`` returns lists every
final that named it when it expired.

The transitions that hooks hear about (``add``, ``add_final``: post-create; ``mark_ready``:
post-finish; ``terminate``: post-terminate; ``expire``: post-expire) write their event when the
repository was built with events on (``events=True``: hooks are configured): the event's outbox
row is then written in the transition's own transaction, so the state change and its event
commit or roll back together. An implementation that writes events also implements
``upload_service.outbox.Outbox``, the delivery side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from upload_service.errors import QuotaExceeded
from upload_service.uploads import Upload, UploadState, VideoInfo


@dataclass(frozen=True, slots=True)
class Usage:
    """What one owner holds: uploads still receiving (finals still assembling among them), and
    bytes stored: the lengths of live uploads, one of unknown length counted by its committed
    offset (bytes count as they arrive; a final of parts of unknown length by 0 until it is
    assembled, then by its length). Every final counts in full, beside its parts."""

    unfinished: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-owner caps (None: no cap) on ``Usage``."""

    uploads: int | None = None
    bytes: int | None = None

    def check(
        self, usage: Usage, *, uploads: int = 0, size: int = 0, deferred: bool = False
    ) -> None:
        """``QuotaExceeded`` when ``uploads`` more unfinished uploads and ``size`` more bytes
        would take ``usage`` past a cap, or when ``deferred`` (a new upload of unknown length,
        whose bytes count as they arrive) finds no byte left."""
        if self.uploads is not None and uploads and usage.unfinished + uploads > self.uploads:
            raise QuotaExceeded(
                f"quota exceeded: {usage.unfinished} unfinished uploads of at most {self.uploads}"
            )
        if self.bytes is None:
            return
        if size and usage.bytes + size > self.bytes:
            raise QuotaExceeded(
                f"quota exceeded: {usage.bytes} bytes stored, {size} more would pass "
                f"the limit of {self.bytes}"
            )
        if deferred and usage.bytes >= self.bytes:
            raise QuotaExceeded(
                f"quota exceeded: {usage.bytes} bytes stored of at most {self.bytes}, "
                "none left for an upload of unknown length"
            )

    def check_new(self, usage: Usage, upload: Upload) -> None:
        """``check`` of ``upload``, not inserted yet: one more unfinished upload while it is
        receiving, its length (of unknown length: a byte left)."""
        receiving = upload.state is UploadState.RECEIVING
        self.check(
            usage,
            uploads=1 if receiving else 0,
            size=upload.length or 0,
            deferred=receiving and upload.length is None,
        )

    def left(self, usage: Usage) -> int | None:
        """The bytes ``usage`` may still grow by (None: no byte quota)."""
        return None if self.bytes is None else max(self.bytes - usage.bytes, 0)


@dataclass(frozen=True, slots=True)
class PageKey:
    """Where a page of uploads ended: the last upload's creation time and id (uploads are listed
    newest first; the id orders uploads created in the same instant)."""

    created_at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class UploadQuery:
    """Which uploads ``list_page`` returns, newest first."""

    owner: str | None = None  # only this owner's; None: everyone's (an open service's caller)
    states: tuple[UploadState, ...] = ()  # in one of these states; empty: any
    created_after: datetime | None = None  # created at or after this (inclusive)
    created_before: datetime | None = None  # created before this (exclusive)
    after: PageKey | None = None  # continue after this upload (the previous page's last)
    direct: bool | None = None  # only direct uploads (True), only others (False); None: both
    limit: int = 50


class UploadRepository(Protocol):
    async def add(self, upload: Upload, quota: Quota | None = None) -> None:
        """Insert a new upload (its storage exists already); with events on, its post-create
        event too. An upload made with a ticket (``upload.ticket``) uses one of the ticket's
        uploads in the same transaction (``tickets``: compare-and-set): ``TicketUsedUp`` (403)
        when none is left, ``Unauthorized`` (401) when the ticket was revoked or expired at
        ``upload.created_at``; nothing is inserted then. With a ``quota`` and an owner, in the
        same transaction as the insert and serialised with the owner's other quota-checked
        transitions (on every replica): ``QuotaExceeded`` if the owner's usage plus this upload
        (one more unfinished upload while receiving, its length; of unknown length: no byte
        left) passes the quota; nothing is inserted."""
        ...

    async def usage(self, owner: str) -> Usage:
        """What ``owner`` holds now (see ``Usage``)."""
        ...

    async def add_final(self, final: Upload, quota: Quota | None = None) -> None:
        """Insert a final upload (with events on, its post-create event) and record its partial
        uploads, in order, in one transaction; a part may be a part of other finals too.
        ``Conflict`` names a part that is no longer a live partial upload (it ended while the
        final was being created); with a ``quota`` and an owner, ``QuotaExceeded`` as for
        ``add`` (the final is one more unfinished upload until assembled, and counts its length
        in full); a ticket's use as for ``add``; nothing is inserted."""
        ...

    async def get(self, upload_id: str) -> Upload | None: ...

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]: ...

    async def list_by_state(self, state: UploadState) -> list[Upload]: ...

    async def list_page(self, query: UploadQuery) -> list[Upload]:
        """At most ``query.limit`` uploads matching ``query``, newest first (by creation time,
        then id, both descending), after ``query.after`` when given. Stable while uploads are
        added: a new upload is newer than every page key handed out before it."""
        ...

    async def list_expired(self, now: datetime) -> list[Upload]:
        """Uploads still receiving whose expiry is at or before ``now``."""
        ...

    async def list_finals_waiting(self) -> list[Upload]:
        """Final uploads not assembled yet."""
        ...

    async def list_ended(self, before: datetime) -> list[Upload]:
        """Uploads that ended (expired, terminated, failed) before ``before``, except parts that
        a final upload still receiving names (its assembly reads their state, to fail it with the
        reason)."""
        ...

    async def claim(self, upload_id: str, token: int) -> Upload | None:
        """A new holder of the upload's lock (fencing ``token`` from a locker that spans hosts)
        records its token, unless a newer one did already (``Conflict``: this holder was
        replaced). From then on, commits that carry an older token are refused. None when the
        upload does not exist."""
        ...

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
        """Move the committed offset of a receiving upload from ``expected`` to ``offset``. Every
        byte below ``offset`` must already be durable in storage. Reaching the length does not
        complete the upload: ``complete`` does, explicitly. With ``fence``, only while that is
        still the token the upload's row was last claimed with. With a ``quota``, an upload of
        unknown length with an owner grows its owner's usage by the bytes committed:
        ``QuotaExceeded`` (nothing committed) when they would pass it (serialised as ``add``)."""
        ...

    async def declare_length(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        """Fix a deferred length; only while the length is unknown and at least the offset.
        With a ``quota`` and an owner, ``QuotaExceeded`` (nothing changed) when the owner's usage
        with the length instead of the offset passes it (serialised as ``add``)."""
        ...

    async def complete(self, upload_id: str, now: datetime) -> Upload:
        """receiving → verifying, only when the committed offset equals the length."""
        ...

    async def assembled(
        self, upload_id: str, length: int, now: datetime, quota: Quota | None = None
    ) -> Upload:
        """A final upload's parts were concatenated into its storage (durably): receiving →
        verifying with that length and offset. With a ``quota`` and an owner, ``QuotaExceeded``
        (nothing changed) when a length unknown until now passes it (serialised as ``add``)."""
        ...

    async def mark_ready(
        self,
        upload_id: str,
        sha256: str,
        now: datetime,
        *,
        video: VideoInfo | None = None,
    ) -> Upload:
        """verifying → ready, with the whole file's hex sha256 and, for a video, what was found
        in it (with events on: post-finish, whose payload carries both)."""
        ...

    async def fail(
        self,
        upload_id: str,
        reason: str,
        now: datetime,
        *,
        only_from: tuple[UploadState, ...],
        give_back: bool = False,
    ) -> Upload:
        """→ failed with ``reason``, only from one of ``only_from``. With ``give_back``, an
        upload made with a ticket gives the ticket its use back, in the same transaction (an
        upload refused before it held anything: its file over the caps)."""
        ...

    async def terminate(self, upload_id: str, now: datetime, *, give_back: bool = False) -> Upload:
        """→ terminated, only from a live state (receiving, verifying, ready) (with events on:
        post-terminate); ``give_back`` as for ``fail``. A partial upload only while no final
        upload still receiving names it (else ``Conflict`` naming the oldest such final, and
        nothing changes): a final waiting for its parts, or being assembled from them, never
        loses one. Once a final is assembled it holds its own bytes, and its parts may go."""
        ...

    async def expire(self, upload_id: str, now: datetime) -> Upload:
        """receiving → expired, only if its expiry has passed at ``now`` (with events on:
        post-expire). A partial upload comes back with every final that names it in ``finals``
        (all still receiving, waiting for it): the caller fails them."""
        ...

    async def force_offset(
        self,
        upload_id: str,
        *,
        expected: int,
        offset: int,
        now: datetime,
        fence: int | None = None,
    ) -> Upload:
        """Reconciliation only (storage holds fewer durable bytes than committed): lower the
        offset of a receiving upload from ``expected`` to ``offset`` (fenced like ``advance``)."""
        ...

    async def set_received(self, upload_id: str, received: int) -> None:
        """Progress only (bytes arrived, not yet durable); never moves the offset."""
        ...

    async def forget(self, upload_id: str) -> None:
        """Delete an ended upload's row (its bytes are gone already), and its records as a part
        of final uploads or as a final made of parts."""
        ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` unless the database answers and takes writes (readiness: a
        database locked by another connection is not ready)."""
        ...
