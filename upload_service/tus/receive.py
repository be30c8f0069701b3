"""Receiving a request body into an upload: write it through the store's appender, make it
durable, and advance the committed offset (``Receiver``, used by ``handler.TusHandler`` and
``creation.Creator``). The body is read through a size-limiting ``LimitedBody`` cut at the room
``limits.Limits`` computes; what is committed is one of two strategies over it:
``checkpointing.Checkpointing`` (no checksum) or ``all_or_nothing.AllOrNothing``
(``Upload-Checksum``), each committing through ``commit.Committer``.

The caller holds the upload's lock and has loaded the upload and checked its state and offset;
the body is read only after that, through a size limit (the bytes the upload has left).

Crash story of a PATCH (what a kill -9 at each step leaves):
- before the body is read (the type of the first bytes checked, space reserved): nothing was
  written; the database holds the last committed offset.
- while bytes are buffered or in the page cache: the database still holds the last committed offset;
  the file may be longer; start-up reconciliation and the next ``append`` cut the excess off.
- after ``Appender.sync`` returned but before the offset commit: the same, the bytes are simply
  received again.
- after the commit: the offset is durable and every byte below it was fsynced before it.
So the reported offset never exceeds the durable bytes and never moves back past what was reported.
Which bytes are committed when, and what a database outage or a lost lock leaves, is told in
``commit`` and in each strategy's module.

A full disk under the bytes (``StorageFull``, 507) ends the body: the written prefix is made
durable and committed (checkpointing) or cut back (all or nothing). An upload of known length has
its space reserved (``Reserver``), at creation and again before each request.

Across replicas (a locker that hands out fencing tokens): the holder claims the upload's row with
its token before reading it (``load``), every commit is refused once a newer holder has claimed
the row, and once the lock is lost (``Lease.lost``) the store writes nothing more and nothing is
committed; the request answers 409 and the client resumes from the committed offset, on
whichever replica.

Shutdown (``Receiver.drain``): every running receive is asked to let go through the release path a
preempting request uses, so it makes what it received durable, commits and answers; a receive that
starts after the drain lets go at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio

from upload_service.errors import ClientGone, ServiceError, StorageError
from upload_service.lifecycle import Lifecycle
from upload_service.locking.base import Lease
from upload_service.storage.base import Appender, Reserver, Store
from upload_service.tus.all_or_nothing import AllOrNothing
from upload_service.tus.body import LimitedBody
from upload_service.tus.checkpointing import Checkpointing
from upload_service.tus.checksum import Checksum, RunningDigests
from upload_service.tus.commit import Committer
from upload_service.tus.content_types import ContentRules
from upload_service.tus.limits import Limits, check_room
from upload_service.tus.sniff import HeadReader
from upload_service.tus.strategy import Strategy
from upload_service.tus.types import HandlerConfig
from upload_service.uploads import Upload, UploadState

logger = logging.getLogger("upload_service.tus")


class Receiver:
    """Streams request bodies into the store and commits what is durable (caller holds the lock)."""

    def __init__(
        self,
        *,
        store: Store,
        config: HandlerConfig,
        digests: RunningDigests,
        lifecycle: Lifecycle,
        committer: Committer,
        limits: Limits,
    ) -> None:
        self._store = store
        self._config = config
        self._digests = digests
        self._lifecycle = lifecycle
        self._committer = committer
        self._limits = limits
        self._running: set[Lease] = set()
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

    @contextmanager
    def _registered(self, lease: Lease) -> Iterator[None]:
        self._running.add(lease)
        try:
            if self._draining:
                lease.request_release()
            yield
        finally:
            self._running.discard(lease)

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
        A ``content_length`` past the room the upload has (``Limits.room``) is refused before
        anything is read.
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
        room, refusal = await self._limits.room(upload)
        if content_length is not None:
            check_room(room, content_length, refusal)
        if rules is not None:
            body = await self.checked_head(body, rules, room, lease)
        start = upload.offset
        reader = LimitedBody(body, room, refusal)
        request_digest = None if checksum is None else checksum.hasher()
        whole = self._digests.take(upload.id, start)
        hashers = [hasher for hasher in (request_digest, whole) if hasher is not None]
        appender = await self._store.append(upload.storage, start, hashers, fence=lease)
        await self._reserved(upload, appender)
        strategy: Strategy = (
            Checkpointing(self._committer, self._config, upload, appender, lease)
            if checksum is None
            else AllOrNothing(
                self._committer, self._config, upload, appender, lease, checksum, request_digest
            )
        )
        overflow: ServiceError | None = None
        failure: StorageError | None = None
        complete_body = False
        ended = "the body ended"
        idle = self._config.body_idle_timeout
        try:
            with anyio.CancelScope() as reading:
                lease.on_release_request(reading.cancel)
                # The idle deadline moves on with the bytes, checked each piece (a monotonic
                # clock read) but moved only every quarter of it (moving a scope's deadline
                # reschedules a timer; the deadline is in the event loop's clock).
                refreshed = time.monotonic()
                reading.deadline = anyio.current_time() + idle
                async for chunk in reader:
                    with anyio.CancelScope(shield=True):
                        await appender.write(chunk)
                    if reader.overflow is not None:
                        break
                    await strategy.written()
                    now = time.monotonic()
                    if now - refreshed > idle / 4:
                        refreshed = now
                        reading.deadline = anyio.current_time() + idle
                else:
                    complete_body = True
            if reading.cancelled_caught:
                complete_body = False
                if anyio.current_time() >= reading.deadline:
                    ended = f"no byte of the body for {idle:g} s"
                else:
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
