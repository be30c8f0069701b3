"""Appending one request's bytes to an upload's file (``open_appender``, ``LocalAppender``).

Crash story: appended bytes sit in a bounded buffer, then in the page cache (``writer``); only
``sync`` (fdatasync, in a worker thread) makes them durable, and only its result is ever committed
as an offset. After a kill -9 the file may hold bytes past the committed offset; ``open_appender``
cuts them off before writing (start-up reconciliation does the same, ``recovery``), so they never
become part of the upload. No write follows a failed one; ``sync`` still makes the prefix the OS
took durable (and a second ``sync`` reports exactly that), and ``aclose`` reports nothing, so a
failing close loses nothing promised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import anyio

from upload_service import threads
from upload_service.errors import StorageError
from upload_service.storage.base import LOCK_LOST, Fence, Hasher
from upload_service.storage.local.files import fdatasync, storage_error, translated
from upload_service.storage.local.writer import SerialQueue, WriterState, hash_only, write_job


async def open_appender(
    path: Path,
    offset: int,
    buffer_size: int,
    hashers: Sequence[Hasher],
    *,
    pool: ThreadPoolExecutor,
    fence: Fence | None,
) -> LocalAppender:
    """The appender of the file at ``path``, at ``offset``; bytes past it (uncommitted
    leftovers) are cut first."""
    # one worker-thread call: open, cut the leftovers, seek (through aiofiles, a hop each)
    with translated("open upload"):
        fd = await threads.run_sync(_open_at, path, offset)
    return LocalAppender(fd, offset, buffer_size, hashers, pool=pool, fence=fence)


def _write_and_sync(job: Callable[[], None], fd: int) -> OSError | None:
    """``job`` (a ``write_job``), then, if it wrote, the fdatasync; the write's error is
    returned (the caller makes the prefix durable then), the fdatasync's raised."""
    try:
        job()
    except OSError as exc:
        return exc
    try:
        fdatasync(fd)
    except OSError as exc:
        raise storage_error(exc, "make upload data durable") from exc
    return None


def _open_at(path: Path, offset: int) -> int:
    """A descriptor of the file at ``path`` positioned at ``offset``, bytes past it cut off;
    ``StorageError`` if it holds fewer."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < offset:
            raise StorageError(f"upload data holds {size} bytes, fewer than offset {offset}")
        if size > offset:
            os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class LocalAppender:
    """Coalesces request bytes into large writes, which a pool thread hashes and writes in order
    (the appender's serial queue) while the next buffers fill. Up to ``MAX_IN_FLIGHT`` writes
    queue there, so the thread goes from one to the next without a round trip through the event
    loop, and disk, hashing and network overlap. With two digests (a checksummed request's and the
    whole file's), a second queue computes the first of them beside the writer. Memory: at most
    ``MAX_IN_FLIGHT + 1`` buffers."""

    MAX_IN_FLIGHT = 2
    # A slow upload's buffer is written out once it is this old (seconds), full or not: memory per
    # upload follows its rate (2 MiB/s holds about 200 KiB), not the buffer size.
    MAX_BUFFER_AGE = 0.1

    def __init__(
        self,
        fd: int,
        offset: int,
        buffer_size: int,
        hashers: Sequence[Hasher] = (),
        *,
        pool: ThreadPoolExecutor,
        fence: Fence | None = None,
    ) -> None:
        self._fd = fd
        # Each digest is fed, in order, by one thread only: the writer's, or the side hasher's.
        self._side_hashers = tuple(hashers)[:-1]
        self._hashers = tuple(hashers)[-1:]
        self._start = offset
        self._accepted = 0  # bytes taken from the caller (written, in flight or buffered)
        self._submitted = 0  # bytes handed to the writer thread
        self._written = 0  # bytes the OS accepted without error, in order
        self._chunks: list[bytes] = []  # received pieces not yet handed to a write
        self._buffered = 0
        self._buffered_since = 0.0  # when the oldest buffered piece arrived
        self._buffer_size = buffer_size
        self._in_flight: deque[tuple[asyncio.Future[None], asyncio.Future[None] | None, list[int]]]
        self._in_flight = deque()
        self._writer = SerialQueue(pool)
        self._side = SerialQueue(pool)
        self._state = WriterState()
        self._state.fence = fence
        self._failed = False  # a write failed: later bytes must never land behind its prefix

    @property
    def offset(self) -> int:
        return self._start + self._accepted

    async def write(self, data: bytes) -> None:
        if self._failed:
            raise StorageError("cannot write upload data: an earlier write failed")
        if self._state.fenced_off():
            self._failed = True
            self._take_chunks()
            raise StorageError(f"cannot write upload data: {LOCK_LOST}")
        now = time.monotonic()
        if not self._chunks:
            self._buffered_since = now
        self._chunks.append(data)
        self._buffered += len(data)
        self._accepted += len(data)
        if self._buffered >= self._buffer_size or now - self._buffered_since >= self.MAX_BUFFER_AGE:
            try:
                await self._submit(self._take_chunks())
            except StorageError:
                self._failed = True
                self._take_chunks()
                raise

    def _take_chunks(self) -> list[bytes]:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        return chunks

    async def _submit(self, chunks: list[bytes]) -> None:
        while len(self._in_flight) >= self.MAX_IN_FLIGHT:
            await self._complete_oldest()
        side = None
        if self._side_hashers:
            side = self._side.submit(partial(hash_only, chunks, self._side_hashers))
        write, progress = self._write_job(chunks)
        job = self._writer.submit(write)
        self._in_flight.append((job, side, progress))

    def _write_job(self, chunks: list[bytes]) -> tuple[Callable[[], None], list[int]]:
        """The ``write_job`` of ``chunks``, next after every byte submitted so far, and the
        count of its bytes the OS took (its progress); the chunks count as submitted."""
        progress = [0]
        position = self._start + self._submitted
        self._submitted += sum(len(chunk) for chunk in chunks)
        job = partial(write_job, self._fd, chunks, self._hashers, position, progress, self._state)
        return job, progress

    async def _complete_oldest(self) -> None:
        job, side, progress = self._in_flight.popleft()
        try:
            with anyio.CancelScope(shield=True):  # its bytes must be counted, whoever cancels
                if side is not None:
                    await side
                await job
        except OSError as exc:
            raise storage_error(exc, "write upload data") from exc
        finally:
            self._written += progress[0]

    async def _drain(self) -> None:
        """Wait for every queued write; raise the first failure once all have ended."""
        failure: StorageError | None = None
        while self._in_flight:
            try:
                await self._complete_oldest()
            except StorageError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def settle(self) -> None:
        pending = self._take_chunks()
        if pending:
            await self._submit(pending)
        await self._drain()

    async def sync(self) -> int:
        if self._chunks and not self._in_flight and not self._side_hashers and not self._failed:
            # Nothing in flight: the last buffer's write and the fdatasync in one worker-thread
            # call (a small PATCH is all one buffer: one hop instead of a write's and a sync's).
            job, progress = self._write_job(self._take_chunks())
            try:
                written = await threads.run_sync(_write_and_sync, job, self._fd)
            finally:
                self._written += progress[0]
            if written is not None:  # the write failed: make the prefix durable, report it
                self._failed = True
                await self._fsync()
                raise storage_error(written, "write upload data")
            return self._start + self._written
        try:
            await self.settle()
        except StorageError:
            # What failed is not counted; the prefix the OS took is made durable and can be
            # reported by calling sync again.
            self._failed = True
            self._take_chunks()
            with contextlib.suppress(StorageError):
                await self._drain()
            await self._fsync()
            raise
        await self._fsync()
        return self._start + self._written

    async def _fsync(self) -> None:
        try:
            await threads.run_sync(fdatasync, self._fd)
        except OSError as exc:
            raise storage_error(exc, "make upload data durable") from exc

    async def aclose(self) -> None:
        self._take_chunks()
        with contextlib.suppress(StorageError):
            await self._drain()
        # Nothing unsynced is ever reported, so a failing close loses nothing promised.
        with contextlib.suppress(OSError):
            await threads.run_sync(os.close, self._fd)
