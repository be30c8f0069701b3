"""Appending one request's bytes to an S3 upload (``open_appender``, ``S3Appender``).

Crash story (the committed offset is the database's, in slot ``k+1``). A tail is never overwritten
by another slot's: ``open_appender`` deletes an old one only when it opens at an offset that does
not need it, so the committed slot's tail always survives. If parts were uploaded but the new tail
not yet written (the request died, or its checksum failed), the highest tail is still slot
``k+1``'s, so ``size`` is the committed offset and the parts past it do not count; ``append`` at
the offset reads back the committed tail and uploads part ``k+1`` again when it fills (S3
replaces a part of the same number); later stale parts are overwritten or left out of
``CompleteMultipartUpload``, whose part list is ours. Only when a committed tail itself is lost
does ``open_appender`` refuse (S3 cannot read the parts of an unfinished upload back).

What counts as durable is always a contiguous run of confirmed parts followed by the tail of the
next slot: ``checkpoint`` writes an empty tail after the confirmed parts (cheap, whatever the part
size), ``sync`` waits for every part in flight and writes the part being built as the tail. Parts
confirmed past the last tail written do not count after a crash (they are overwritten or left out
of the completed upload), so an offset committed from either is always true. Before every part or
tail goes out the fence is checked; ``aclose`` cancels parts not yet started and waits for those
in flight, so nothing of this appender reaches S3 after the caller lets go of the upload's lock.

Parts go out while the next ones are being received: each full part is handed, in its own spool
file, to the store's part-upload threads, at most ``concurrency`` of them at a time per appender
(a receiving thread waits for the oldest when that many are in flight). Disk per upload is thus at
most ``concurrency + 1`` parts of spool (unlinked temporary files), memory ``BUFFER_SIZE`` plus
what boto3 reads at a time.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, wait
from dataclasses import dataclass
from typing import IO

from upload_service.errors import ServiceError, StorageError
from upload_service.storage.base import LOCK_LOST, Fence, Hasher, StorageKey
from upload_service.storage.s3.bucket import Bucket
from upload_service.storage.s3.layout import MAX_PARTS, MiB, tail_key
from upload_service.storage.s3.workers import Workers, spool_error


@dataclass(frozen=True, slots=True)
class Target:
    """Where one appender's bytes go: the multipart upload of object ``obj`` in ``bucket``, its
    part size, the store's threads, and how many parts may be in flight at a time."""

    bucket: Bucket
    workers: Workers
    obj: str
    upload_id: str
    part_size: int
    concurrency: int = 1


def _open(bucket: Bucket, key: StorageKey, offset: int) -> tuple[str, int, IO[bytes], int]:
    """The upload's UploadId and part size, a spool holding its bytes past the last part before
    ``offset`` (read back from the slot's tail), and that tail's size; other slots' tails are
    deleted. ``StorageError`` if the upload holds fewer than ``offset`` bytes."""
    obj = bucket.object_key(key)
    layout = bucket.layout(key)
    full, rest = divmod(offset, layout.part_size)
    tail = layout.tails.get(full + 1, -1)
    if not layout.has_parts(full) or tail < rest:
        raise StorageError(f"upload data holds {layout.size()} bytes, fewer than offset {offset}")
    spool = bucket.spool()
    try:
        if rest:
            bucket.copy_into(spool, tail_key(obj, full + 1), rest)
        for number in layout.tails:  # tails of other slots than ``offset``'s: not needed
            if number != full + 1:
                bucket.client.delete_object(bucket.name, tail_key(obj, number))
    except BaseException:
        spool.close()
        raise
    return layout.upload_id, layout.part_size, spool, tail


async def open_appender(
    bucket: Bucket,
    workers: Workers,
    key: StorageKey,
    offset: int,
    hashers: Sequence[Hasher],
    *,
    fence: Fence | None,
    concurrency: int,
) -> S3Appender:
    obj = bucket.object_key(key)
    upload_id, part_size, spool, tail = await workers.run(_open, bucket, key, offset)
    target = Target(bucket, workers, obj, upload_id, part_size, concurrency)
    return S3Appender(target, offset, spool, tail, hashers, fence)


class S3Appender:
    """Buffers up to ``BUFFER_SIZE`` bytes, then (in a worker thread) hashes them, spools them and
    hands every part that fills up to the part-upload threads; ``sync`` also writes the spooled
    rest as the tail."""

    BUFFER_SIZE = MiB

    def __init__(
        self,
        target: Target,
        offset: int,
        spool: IO[bytes],
        tail_object: int,
        hashers: Sequence[Hasher],
        fence: Fence | None,
    ) -> None:
        self._bucket = target.bucket
        self._workers = target.workers
        self._obj = target.obj
        self._upload_id = target.upload_id
        self._part_size = part_size = target.part_size
        self._parts, spooled = divmod(offset, part_size)  # parts handed out (or durable before)
        self._confirmed = self._parts  # of them, the contiguous run S3 confirmed
        self._spool = spool  # the bytes of slot ``parts + 1``
        self._spooled = spooled
        self._tail_slot = self._parts + 1  # the latest tail written (or found) ...
        # ... and its size, when it holds exactly the spooled bytes (-1: unknown). A tail found
        # longer than the offset holds bytes past it that this request may replace.
        self._tail_size = tail_object if tail_object == spooled else -1
        self._start = offset
        # What the store's size reports after a crash: a slot counts once its tail is written.
        self._synced = offset
        self._accepted = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._hashers = tuple(hashers)
        self._fence = fence
        self._concurrency = max(1, target.concurrency)
        self._in_flight: dict[int, Future[None]] = {}  # part number -> its upload
        self._done: set[int] = set()  # parts confirmed out of order, past ``confirmed``
        self._failed = False
        self._error: StorageError | None = None  # the first part upload that failed

    @property
    def offset(self) -> int:
        return self._start + self._accepted

    def _fenced_off(self) -> bool:
        return self._fence is not None and self._fence.lost

    async def write(self, data: bytes) -> None:
        if self._failed:
            raise StorageError("cannot write upload data: an earlier write failed")
        if self._fenced_off():
            self._fail()
            raise StorageError(f"cannot write upload data: {LOCK_LOST}")
        self._chunks.append(data)
        self._buffered += len(data)
        self._accepted += len(data)
        if self._buffered >= self.BUFFER_SIZE:
            await self._flush()

    def _fail(self) -> None:
        self._failed = True
        self._chunks, self._buffered = [], 0

    async def _flush(self) -> None:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if not chunks:
            return
        try:
            await self._workers.run(self._absorb, chunks)
        except StorageError:
            self._fail()
            raise

    async def settle(self) -> None:
        if self._failed:
            raise StorageError("cannot write upload data: an earlier write failed")
        await self._flush()

    async def checkpoint(self) -> int:
        if self._failed:
            return self._synced
        try:
            await self._flush()
            await self._workers.run(self._mark_confirmed)
        except StorageError:
            self._fail()
            raise
        return self._synced

    async def sync(self) -> int:
        if self._failed:
            # The failure was raised by the call that met it. Parts still in flight may yet be
            # confirmed: their run is made to count as far as it is contiguous.
            with contextlib.suppress(StorageError):
                await self._workers.run(self._settle_failed)
            return self._synced
        try:
            await self._flush()
            await self._workers.run(self._write_tail)
        except StorageError:
            self._fail()
            raise
        return self._synced

    async def aclose(self) -> None:
        self._chunks, self._buffered = [], 0
        with contextlib.suppress(StorageError):  # nothing unsynced was ever reported
            await self._workers.run(self._close)

    # -- in worker threads ------------------------------------------------------------------------

    def _absorb(self, chunks: list[bytes]) -> None:
        self._raise_failed_parts()
        for chunk in chunks:
            for hasher in self._hashers:
                hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                piece = view[: self._part_size - self._spooled]
                self._spool.seek(self._spooled)
                self._spool.write(piece)
                self._spooled += len(piece)
                view = view[len(piece) :]
                if self._spooled == self._part_size:
                    self._hand_out_part()

    def _check_fence(self) -> None:
        if self._fenced_off():  # right before bytes go out
            raise StorageError(f"cannot write upload data: {LOCK_LOST}")

    def _hand_out_part(self) -> None:
        number = self._parts + 1
        if number > MAX_PARTS:
            raise StorageError(f"the upload needs more than {MAX_PARTS} parts of its size")
        while len(self._in_flight) >= self._concurrency:
            self._wait_for_parts(all_of_them=False)
        spool, self._spool = self._spool, self._new_spool()
        spool.flush()
        future = self._workers.submit(self._upload_part, number, spool)
        future.add_done_callback(lambda _done: spool.close())  # also when cancelled unstarted
        self._in_flight[number] = future
        self._parts = number
        self._spooled = 0

    def _new_spool(self) -> IO[bytes]:
        return self._bucket.spool()

    def _upload_part(self, number: int, spool: IO[bytes]) -> None:
        """In a part-upload thread: send the spooled part, then drop its spool file."""
        try:
            self._check_fence()
            spool.seek(0)
            bucket = self._bucket
            bucket.client.upload_part(
                bucket.name, self._obj, self._upload_id, number, spool, self._part_size
            )
        finally:
            spool.close()

    def _wait_for_parts(self, *, all_of_them: bool) -> None:
        """Wait for the oldest part in flight (or all); record the confirmed ones; raise the
        first failure."""
        if not self._in_flight:
            return
        if all_of_them:
            wait(self._in_flight.values())
        else:
            self._in_flight[min(self._in_flight)].exception()  # waits, raises nothing
        self._reap()
        self._raise_failed_parts()

    def _reap(self) -> None:
        """Move finished parts out of flight: confirmed ones extend the contiguous run."""
        for number, future in list(self._in_flight.items()):
            if not future.done():
                continue
            del self._in_flight[number]
            try:
                error = future.exception()
            except CancelledError:
                error = StorageError("cannot write upload data: the part upload was cancelled")
            if error is None:
                self._done.add(number)
            elif self._error is None:
                self._error = _as_storage_error(error)
        while self._confirmed + 1 in self._done:
            self._confirmed += 1
            self._done.discard(self._confirmed)

    def _raise_failed_parts(self) -> None:
        self._reap()
        if self._error is not None:
            raise self._error

    def _put_tail(self, slot: int, body: IO[bytes], size: int) -> None:
        self._check_fence()
        body.seek(0)
        self._bucket.client.put_object(self._bucket.name, tail_key(self._obj, slot), body, size)
        self._tail_slot, self._tail_size = slot, size
        self._synced = (slot - 1) * self._part_size + size

    def _mark_confirmed(self) -> None:
        """``checkpoint``: an empty tail after the confirmed parts, when they grew."""
        self._raise_failed_parts()
        self._mark_run()

    def _mark_run(self) -> None:
        if self._confirmed * self._part_size > self._synced:
            self._put_tail(self._confirmed + 1, io.BytesIO(b""), 0)

    def _write_tail(self) -> None:
        self._wait_for_parts(all_of_them=True)
        slot = self._parts + 1
        if slot == self._tail_slot and self._spooled == self._tail_size:
            self._synced = (slot - 1) * self._part_size + self._spooled
            return  # the slot's tail object holds exactly the spooled bytes
        self._spool.flush()
        self._put_tail(slot, self._spool, self._spooled)

    def _settle_failed(self) -> None:
        """After a failure: let the parts in flight end, and count the confirmed run."""
        with contextlib.suppress(StorageError):
            self._wait_for_parts(all_of_them=True)
        self._mark_run()

    def _close(self) -> None:
        for future in self._in_flight.values():
            future.cancel()
        wait(self._in_flight.values())
        self._in_flight.clear()
        self._spool.close()


def _as_storage_error(error: BaseException) -> StorageError:
    if isinstance(error, StorageError):
        return error
    if isinstance(error, ServiceError):  # NotFound: the multipart upload is gone
        return StorageError(f"cannot write upload data: {error.message}")
    if isinstance(error, OSError):  # the local spool disk
        return spool_error(error)
    return StorageError(f"cannot write upload data: {error}")
