"""Receiving a request body into an upload: write it through the store's appender, make it
durable, and advance the committed offset (``Receiver``, used by ``handler.TusHandler``).
The body is read through a size-limiting ``LimitedBody``; what is committed is one of two
strategies: checkpointing (no checksum) or all or nothing (``Upload-Checksum``).

The caller holds the upload's lock and has loaded the upload and checked its state and offset;
the body is read only after that, through a size limit (the bytes the upload has left).

Crash story of a PATCH (what a kill -9 at each step leaves):
- while bytes are buffered or in the page cache: the database still holds the last committed offset;
  the file may be longer; start-up reconciliation and the next ``append`` cut the excess off.
- after ``Appender.sync`` returned but before the offset commit: the same, the bytes are simply
  received again.
- after the commit: the offset is durable and every byte below it was fsynced before it.
So the reported offset never exceeds the durable bytes and never moves back past what was reported.

Outages: a commit the database refuses (unreachable, locked: 503; its disk full: 507) commits
nothing, so the offset stays at the last commit, below the durable bytes; the next request's
``append`` (or reconciliation) cuts the uncommitted rest off. A full disk under the bytes
(``StorageFull``, 507) ends the body: the written prefix is made durable and committed. An upload of
known length has its space reserved (``Reserver``), at creation and again before each request.

Across replicas (a locker that hands out fencing tokens): the holder claims the upload's row with
its token before reading it, every commit is refused once a newer holder has claimed the row, and
once the lock is lost (``Lease.lost``) the store writes nothing more and nothing is committed; the
request answers 409 and the client resumes from the committed offset, on whichever replica.

Shutdown (``Receiver.drain``): every running receive is asked to let go through the release path a
preempting request uses, so it makes what it received durable, commits and answers; a receive that
starts after the drain lets go at once.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from upload_service.errors import (
    ClientGone,
    Conflict,
    QuotaExceeded,
    ServiceError,
    StorageError,
    StorageFull,
    TooLarge,
)
from upload_service.lifecycle import Lifecycle
from upload_service.locking.base import Lease
from upload_service.storage.base import (
    Appender,
    Checkpointer,
    Finisher,
    Hasher,
    Reserver,
    Store,
    TailDiscarder,
)
from upload_service.tus.body import LimitedBody
from upload_service.tus.checksum import Checksum, ChecksumMismatch, RunningDigests
from upload_service.tus.content_types import ContentRules
from upload_service.tus.sniff import HeadReader
from upload_service.tus.types import HandlerConfig, LeaseLost
from upload_service.uploads import Upload, UploadState, smallest

if TYPE_CHECKING:
    from upload_service.repository import UploadRepository

logger = logging.getLogger("upload_service.tus")

# A commit refused for a full disk under the database (often the disk the bytes just filled) is
# tried again after cutting this many of the request's last bytes off, to make room for it.
GIVE_BACK = 1024 * 1024


def check_room(room: int | None, content_length: int, refusal: ServiceError | None = None) -> None:
    """A request body of ``content_length`` bytes is refused before it is read when it does not
    fit in ``room`` (``Receiver.limit`` or ``Receiver.room``): with ``refusal``, else a 413."""
    if room is not None and content_length > room:
        raise refusal or TooLarge(
            f"Content-Length {content_length} exceeds the {room} bytes the upload has left"
        )


class Receiver:
    """Streams request bodies into the store and commits what is durable (caller holds the lock)."""

    def __init__(
        self,
        *,
        store: Store,
        repository: UploadRepository,
        config: HandlerConfig,
        clock: Callable[[], datetime],
        digests: RunningDigests,
        lifecycle: Lifecycle,
    ) -> None:
        self._store = store
        self._repo = repository
        self._config = config
        self._clock = clock
        self._digests = digests
        self._lifecycle = lifecycle
        self._running: set[Lease] = set()
        self._reading: dict[str, int] = {}  # upload id -> receives still reading their body
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> int:
        """Ask every running receive, and every later one, to let go of its upload as a
        preempting request would: each commits what is durable and answers. Returns how many
        were running. Safe to call more than once."""
        self._draining = True
        running = list(self._running)
        for lease in running:
            lease.request_release()
        return len(running)

    def reading(self, upload_id: str) -> bool:
        """Whether a receive in this process is still reading a body into the upload (its
        client is sending); false once the body ended, broke off or was asked to stop, while the
        receive commits what arrived and lets go."""
        return self._reading.get(upload_id, 0) > 0

    @contextmanager
    def _reading_body(self, upload_id: str) -> Iterator[None]:
        self._reading[upload_id] = self._reading.get(upload_id, 0) + 1
        try:
            yield
        finally:
            left = self._reading.pop(upload_id) - 1
            if left:
                self._reading[upload_id] = left

    @contextmanager
    def _registered(self, lease: Lease) -> Iterator[None]:
        self._running.add(lease)
        try:
            if self._draining:
                lease.request_release()
            yield
        finally:
            self._running.discard(lease)

    def limit(self, offset: int, length: int | None, cap: int | None = None) -> int | None:
        """The bytes an upload at ``offset`` may still take: up to its length, else up to the
        service's maximum size or its creator's own ``cap``, whichever is smaller."""
        if length is not None:
            return length - offset
        limit = smallest(self._config.max_size, cap)
        return None if limit is None else max(limit - offset, 0)

    async def room(self, upload: Upload) -> tuple[int | None, ServiceError | None]:
        """The bytes a request may write into ``upload`` and the refusal past them: its
        ``limit`` (413), or, for an upload of unknown length whose bytes count against its
        owner's byte quota as they arrive, what is left of that quota now if that is less (403;
        the commit checks the quota again, serialised with the owner's other uploads)."""
        limit = self.limit(upload.offset, upload.length, upload.size_cap)
        quota = self._config.quota
        if upload.length is not None or upload.owner is None or quota is None:
            return limit, None
        usage = await self._repo.usage(upload.owner)
        left = quota.left(usage)
        if left is None or (limit is not None and limit <= left):
            return limit, None
        return left, QuotaExceeded(
            f"quota exceeded: {usage.bytes} bytes stored, the upload's bytes would pass "
            f"the limit of {quota.bytes}"
        )

    async def receive(
        self,
        upload: Upload,
        body: AsyncIterator[bytes],
        lease: Lease,
        checksum: Checksum | None = None,
        *,
        rules: ContentRules | None = None,
        content_length: int | None = None,
    ) -> Upload:
        """Stream the body into the store, checkpointing durably; return the committed upload.

        Without a checksum, ends early keeping what was made durable when the client disconnects
        or another request asks for the upload. With one, the request is all or nothing: nothing
        is committed before the digest matches, and a mismatch (460), a disconnect or any error
        cuts the stored bytes back to where the request started. Raises ``TooLarge`` when the
        body runs past the upload's length and ``StorageError`` when the store fails.

        With ``rules`` (the request that carries offset 0), the file's first bytes are read and
        their type checked before the store is touched: ``UnsupportedMediaType`` stores nothing.
        A ``content_length`` past the ``room`` the upload has is refused before anything is read.
        """
        with self._registered(lease):
            return await self._receive(upload, body, lease, checksum, rules, content_length)

    async def _receive(
        self,
        upload: Upload,
        body: AsyncIterator[bytes],
        lease: Lease,
        checksum: Checksum | None,
        rules: ContentRules | None,
        content_length: int | None,
    ) -> Upload:
        room, refusal = await self.room(upload)
        if content_length is not None:
            check_room(room, content_length, refusal)
        if rules is not None:
            with self._reading_body(upload.id):
                body = await self.checked_head(body, rules, room, lease)
        start = upload.offset
        reader = LimitedBody(body, room, refusal)
        request_digest = None if checksum is None else checksum.hasher()
        whole = self._digests.take(upload.id, start)
        hashers = [hasher for hasher in (request_digest, whole) if hasher is not None]
        appender = await self._store.append(upload.storage, start, hashers, fence=lease)
        await self._reserved(upload, appender)
        strategy: _Strategy = (
            _Checkpointing(self, upload, appender, lease)
            if checksum is None
            else _AllOrNothing(self, upload, appender, lease, checksum, request_digest)
        )
        overflow: ServiceError | None = None
        failure: StorageError | None = None
        complete_body = False
        ended = "the body ended"
        try:
            with anyio.CancelScope() as reading, self._reading_body(upload.id):
                lease.on_release_request(reading.cancel)
                async for chunk in reader:
                    with anyio.CancelScope(shield=True):
                        await appender.write(chunk)
                    if reader.overflow is not None:
                        break
                    await strategy.written()
                else:
                    complete_body = True
            if reading.cancelled_caught:
                complete_body = False
                ended = "another request or the shutdown asked for the upload"
        except ClientGone:
            ended = "the client went away"  # keep what arrived (unless checksummed): see below
        except StorageError as exc:
            failure = exc
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    failure, overflow = await strategy.end(complete_body, failure, reader.overflow)
                finally:
                    await appender.aclose()
                upload = strategy.upload
                if upload.offset != appender.offset or failure is not None:
                    whole = None  # the running digest saw bytes that are not committed
                await strategy.closed()
        refusal = failure or overflow  # a storage failure, too long a body, a checksum mismatch
        logger.log(
            logging.DEBUG if complete_body and refusal is None else logging.INFO,
            "received %d bytes, offset %d -> %d: %s",
            reader.received,
            start,
            upload.offset,
            ended if refusal is None else refusal.message,
            extra={"upload_id": upload.id},
        )
        if whole is not None and upload.state is UploadState.RECEIVING:
            self._digests.put(upload.id, upload.offset, whole)
        if upload.state is UploadState.VERIFYING:  # this request wrote the last byte
            upload = await self._lifecycle.completed(
                upload, None if whole is None else whole.digest()
            )
        if failure is not None:
            raise failure
        if overflow is not None:
            raise overflow
        return upload

    async def _reserved(self, upload: Upload, appender: Appender) -> None:
        """Reserve the rest of an upload of known length before writing (``Reserver``): space
        reserved at creation costs nothing more, and what a cut-back tail released (``append``
        drops leftovers) is taken again, or the request is a 507 before any byte is written."""
        if not isinstance(self._store, Reserver) or upload.length is None:
            return
        try:
            await self._store.reserve(upload.storage, upload.offset, upload.length)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await appender.aclose()
            raise

    async def checked_head(
        self,
        body: AsyncIterator[bytes],
        rules: ContentRules,
        limit: int | None,
        lease: Lease | None = None,
    ) -> AsyncIterator[bytes]:
        """Read a file's first bytes (as many as the sniffer looks at, or what the request
        carries if it ends or breaks before) and check their type (``UnsupportedMediaType``);
        return the body, those bytes included. A short first request is judged on what it
        carried: no byte is stored unchecked. ``limit``: the bytes the upload has left."""
        size = rules.head_size if limit is None else min(rules.head_size, limit)
        reader = HeadReader(body, size)
        with anyio.CancelScope() as reading:
            if lease is not None:
                lease.on_release_request(reading.cancel)
            await reader.read()
        await rules.check_head(reader.head[:size], short=reader.received < size)
        return reader.rest()

    async def _commit_checked(
        self,
        upload: Upload,
        appender: Appender,
        lease: Lease,
        checksum: Checksum,
        request_digest: Hasher | None,
    ) -> tuple[Upload, ServiceError | None]:
        """All or nothing: the digest is compared before anything is made durable, and only a
        request made durable whole is committed."""
        assert request_digest is not None
        await appender.settle()
        if request_digest.digest() != checksum.digest:
            return upload, ChecksumMismatch(
                f"{checksum.algorithm} of the request body does not match "
                "Upload-Checksum; the chunk was discarded"
            )
        durable = await appender.sync()
        if durable != appender.offset:
            return upload, StorageError(
                "storage could not make the whole checksummed request durable; resend it"
            )
        if durable != upload.offset:
            upload = await self._commit(upload, durable, lease)
        return upload, None

    async def _discard(self, upload: Upload) -> None:
        """Cut a rejected checksummed request's bytes off; the offset never moved. (A store that
        cannot cut bytes back never made them part of the upload: ``append`` opens at the
        committed offset.)"""
        if isinstance(self._store, TailDiscarder):
            await self._store.discard_tail(upload.storage, upload.offset)
        await self._repo.set_received(upload.id, upload.offset)

    async def _checkpoint(
        self, upload: Upload, appender: Appender, lease: Lease, *, final: bool = True
    ) -> Upload:
        """Commit what is durable: all that was written (``final``, or an appender that syncs
        cheaply), else what a ``Checkpointer`` makes durable cheaply."""
        if lease.lost:
            raise LeaseLost()  # before the sync: a lost holder flushes nothing more
        if not final and isinstance(appender, Checkpointer):
            durable = await appender.checkpoint()
        else:
            durable = await appender.sync()
        if durable == upload.offset:
            return upload
        return await self._commit(upload, durable, lease)

    async def _give_back(
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
        return await self._commit(upload, kept, lease)

    async def _commit(self, upload: Upload, offset: int, lease: Lease) -> Upload:
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
                expires_at=self.expiry(now),
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

    def expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self._config.expire_after)


class _Strategy(ABC):
    """How one request's written bytes become committed: a step after every chunk written
    (the last, overflowing one excepted), the end once the body stops (shielded, before the
    appender closes) and a step after it closed. Every step runs under the upload's lock."""

    def __init__(
        self, receiver: Receiver, upload: Upload, appender: Appender, lease: Lease
    ) -> None:
        self.upload = upload  # the committed upload, advanced by the strategy
        self._receiver = receiver
        self._config = receiver._config
        self._appender = appender
        self._lease = lease
        self._last_progress = time.monotonic()

    async def written(self) -> None:
        await self._progress(time.monotonic())

    async def _progress(self, now: float) -> None:
        """Show how much arrived (``received``), committing nothing."""
        if now - self._last_progress >= self._config.progress_seconds:
            with anyio.CancelScope(shield=True):
                await self._receiver._repo.set_received(self.upload.id, self._appender.offset)
            self._last_progress = now

    @abstractmethod
    async def end(
        self, complete_body: bool, failure: StorageError | None, overflow: ServiceError | None
    ) -> tuple[StorageError | None, ServiceError | None]:
        """Commit what this strategy keeps of the request; returns the failure and the error to
        raise after the appender closed (``overflow``: 413, 460, or a request not made durable whole)."""

    async def closed(self) -> None:
        return None


class _Checkpointing(_Strategy):
    """Without a checksum: commit what is durable every ``checkpoint_bytes`` or
    ``checkpoint_seconds``, and at the end whatever arrived, even of a cut-off body."""

    def __init__(
        self, receiver: Receiver, upload: Upload, appender: Appender, lease: Lease
    ) -> None:
        super().__init__(receiver, upload, appender, lease)
        self._last_checkpoint = self._last_progress
        self._checkpointed = appender.offset  # bytes accepted at the last checkpoint

    async def written(self) -> None:
        now = time.monotonic()
        if (
            self._appender.offset - self._checkpointed >= self._config.checkpoint_bytes
            or now - self._last_checkpoint >= self._config.checkpoint_seconds
        ):
            with anyio.CancelScope(shield=True):
                self.upload = await self._receiver._checkpoint(
                    self.upload, self._appender, self._lease, final=False
                )
            self._checkpointed = self._appender.offset
            self._last_checkpoint = self._last_progress = time.monotonic()
        else:
            await self._progress(now)

    async def end(
        self, complete_body: bool, failure: StorageError | None, overflow: ServiceError | None
    ) -> tuple[StorageError | None, ServiceError | None]:
        try:
            self.upload = await self._receiver._checkpoint(self.upload, self._appender, self._lease)
        except StorageError as exc:
            failure = failure or exc
            # the written prefix
            try:
                self.upload = await self._receiver._checkpoint(
                    self.upload, self._appender, self._lease
                )
            except StorageFull as full:
                if not isinstance(failure, StorageFull):
                    raise
                self.upload = await self._receiver._give_back(
                    self.upload, self._appender, self._lease, full
                )
        return failure, overflow


class _AllOrNothing(_Strategy):
    """With ``Upload-Checksum``: commit nothing until the whole body arrived and its digest
    matched; otherwise cut the stored bytes back to where the request started."""

    def __init__(
        self,
        receiver: Receiver,
        upload: Upload,
        appender: Appender,
        lease: Lease,
        checksum: Checksum,
        request_digest: Hasher | None,
    ) -> None:
        super().__init__(receiver, upload, appender, lease)
        self._start = upload.offset
        self._checksum = checksum
        self._request_digest = request_digest

    async def end(
        self, complete_body: bool, failure: StorageError | None, overflow: ServiceError | None
    ) -> tuple[StorageError | None, ServiceError | None]:
        if complete_body and failure is None and overflow is None:
            self.upload, overflow = await self._receiver._commit_checked(
                self.upload, self._appender, self._lease, self._checksum, self._request_digest
            )
        return failure, overflow

    async def closed(self) -> None:
        start = self._start
        if self.upload.offset == start and self._appender.offset != start:
            await self._receiver._discard(self.upload)
