"""Committing received bytes: advance an upload's offset, by compare-and-set, to what the store
confirmed durable (``Committer``, used by the receive strategies, reconciliation and PATCH's
length declaration). The one source of truth for the offset is the database; it only ever
moves to bytes an ``Appender.sync`` (or a ``Checkpointer``) reported durable.

Crash story of a commit (what a kill -9 at each step leaves):
- after ``Appender.sync`` returned but before the offset commit: the database still holds the
  last committed offset, the file is longer; start-up reconciliation and the next ``append`` cut
  the excess off, and the client sends those bytes again.
- after the commit: the offset is durable and every byte below it was fsynced before it.
- after the commit of the last byte but before ``complete``: the upload is complete but still
  receiving; start-up reconciliation completes it.
So the reported offset never exceeds the durable bytes and never moves back past what was reported.

Outages: a commit the database refuses (unreachable, locked: 503; its disk full: 507) commits
nothing, so the offset stays at the last commit, below the durable bytes; the next request's
``append`` (or reconciliation) cuts the uncommitted rest off. A commit refused for a full disk
under the database, once the body ended, is tried again after giving back the request's last
``GIVE_BACK`` bytes (``give_back``), cut off durably before the offset moves.

Across replicas (a locker that hands out fencing tokens): every commit carries the holder's
token and the database refuses it once a newer holder has claimed the row; once the lock is lost
(``Lease.lost``) nothing is committed (``LeaseLost``, 409) and the client resumes from the
committed offset, on whichever replica.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from upload_service.errors import Conflict, StorageFull
from upload_service.locking.base import Lease
from upload_service.storage.base import Appender, Finisher, Store, TailDiscarder
from upload_service.tus.types import HandlerConfig, LeaseLost
from upload_service.uploads import Upload

if TYPE_CHECKING:
    from upload_service.db.base import UploadRepository

# A commit refused for a full disk under the database (often the disk the bytes just filled) is
# tried again after cutting this many of the request's last bytes off, to make room for it.
GIVE_BACK = 1024 * 1024


class Committer:
    """Moves the committed offset of an upload whose lock the caller holds."""

    def __init__(
        self,
        *,
        store: Store,
        repository: UploadRepository,
        config: HandlerConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._repo = repository
        self._config = config
        self._clock = clock

    async def commit(self, upload: Upload, offset: int, lease: Lease) -> Upload:
        """Advance the offset to durable ``offset``; the last byte also completes the upload
        (a crash between the two leaves it complete but receiving: start-up completes it).

        Fenced: nothing is committed once the lease is lost, and the database refuses a commit
        whose fencing token a newer holder has replaced (the row check is in the same statement).
        """
        if lease.lost:
            raise LeaseLost()
        now = self._clock()
        try:
            upload = await self._repo.advance(
                upload.id,
                expected=upload.offset,
                offset=offset,
                now=now,
                expires_at=self._config.expiry(now),
                fence=lease.token,
                # bytes of unknown length count against the quota as they are committed
                quota=self._config.quota if upload.length is None else None,
            )
        except Conflict:
            if lease.token is not None:
                current = await self._repo.get(upload.id)
                if current is not None and current.fence != lease.token:
                    raise LeaseLost() from None
            raise
        if upload.is_complete:
            upload = await self.complete(upload)
        return upload

    async def complete(self, upload: Upload) -> Upload:
        """Every byte is committed: let the store finish the object, then leave ``receiving``."""
        if isinstance(self._store, Finisher):
            assert upload.length is not None
            await self._store.finish(upload.storage, upload.length)
        return await self._repo.complete(upload.id, self._clock())

    async def show_received(self, upload: Upload, received: int) -> None:
        """Show how much of a request arrived (``received``, progress only: it commits nothing
        and a crash may leave it past the durable bytes)."""
        await self._repo.set_received(upload.id, received)

    async def discard(self, upload: Upload) -> None:
        """Cut the stored bytes past the committed offset off (a rejected request's; the offset
        never moved). A store that cannot cut bytes back never made them part of the upload:
        ``append`` opens at the committed offset."""
        if isinstance(self._store, TailDiscarder):
            await self._store.discard_tail(upload.storage, upload.offset)
        await self._repo.set_received(upload.id, upload.offset)

    async def give_back(
        self, upload: Upload, appender: Appender, lease: Lease, full: StorageFull
    ) -> Upload:
        """The body has ended and the database refused the commit for a full disk: cut the
        request's last ``GIVE_BACK`` bytes off (durably) to make room, and commit the rest. The
        stored bytes then end at the committed offset, whether the commit succeeds or not."""
        if not isinstance(self._store, TailDiscarder):
            raise full
        durable = await appender.sync()
        kept = max(upload.offset, durable - GIVE_BACK)
        await self._store.discard_tail(upload.storage, kept)
        if kept == upload.offset:
            raise full
        return await self.commit(upload, kept, lease)
