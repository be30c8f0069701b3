"""Uploads as files on the local disk, written through aiofiles and made durable with fsync.

Crash story: ``create`` fsyncs the new file and its directory, so an upload row never points at a
file that a crash can lose. Appended bytes sit in a bounded buffer, then in the page cache; only
``sync`` (flush + fsync, in a worker thread) makes them durable, and only its result is ever committed
as an offset. After kill -9 the file may hold bytes past the committed offset; ``append`` cuts them
off before writing, and start-up reconciliation does the same.

Space: ``create`` of an upload of known length reserves its blocks (``space.reserve``, keeping the
size), so it cannot run out of space midway, and refuses it (``StorageFull``, nothing left) when
it does not fit with ``min_free`` bytes to spare; a full disk anywhere else is ``StorageFull``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

import aiofiles
import aiofiles.os
import anyio.to_thread

from upload_service.errors import NotFound, StorageError, StorageFull
from upload_service.storage import space
from upload_service.storage.base import Fence, Hasher, StorageKey, check_upload_id

if TYPE_CHECKING:
    from aiofiles.threadpool.binary import AsyncFileIO

READ_CHUNK = 256 * 1024
HASH_CHUNK = 1024 * 1024
COPY_CHUNK = 256 * 1024 * 1024


@contextlib.contextmanager
def _translated(action: str, missing: str = "upload data is missing") -> Iterator[None]:
    """The store's error boundary: a missing file is NotFound, any other OSError a StorageError."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFound(missing) from exc
    except OSError as exc:
        raise _storage_error(exc, action) from exc


def _storage_error(exc: OSError, action: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"cannot {action}: storage is full")
    return StorageError(f"cannot {action}: {exc.strerror or exc.__class__.__name__}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fdatasync(fd: int) -> None:
    # fdatasync covers the data and the file size, which is all a reader of the upload needs.
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _lower_priority(nice: int) -> None:
    """Runs first in each writer thread: on Linux, where threads have a nice value of their own,
    this one yields the CPU to the event loop's thread when the machine is saturated."""
    if nice and sys.platform == "linux":
        with contextlib.suppress(OSError):  # raising one's own nice value is always allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class _SerialQueue:
    """Runs one appender's jobs in order, one at a time, on the store's shared thread pool: at
    most one pool thread works for an appender, and the pool bounds the threads of every upload
    together (beyond it, uploads wait their turn). A thread runs the queued jobs back to back."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._jobs: deque[tuple[Future[None], Callable[[], None]]] = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, job: Callable[[], None]) -> asyncio.Future[None]:
        future: Future[None] = Future()
        with self._lock:
            self._jobs.append((future, job))
            start = not self._running
            self._running = True
        if start:
            self._pool.submit(self._run)
        return asyncio.wrap_future(future)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._running = False
                    return
                future, job = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                job()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)


class _WriterState:
    """Shared by one appender's writes, which run one after another in its writer thread."""

    failed = False
    fence: Fence | None = None


def _fenced_off(state: _WriterState) -> bool:
    return state.fence is not None and state.fence.lost


_FENCED = "the upload's lock was lost (a newer request owns it)"


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), which Python does not wrap; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", function)


def _start_writeback(fd: int, position: int, count: int) -> None:
    """Ask the kernel to start writing these pages to the disk now, without waiting for it: the
    disk works while more bytes arrive, so a checkpoint's fdatasync has little left to flush.
    (Only a hint: ctypes drops the GIL around the call, and a failure changes nothing.)"""
    function = _sync_file_range()
    if function is not None and count:
        function(fd, position, count, _SYNC_FILE_RANGE_WRITE)


def _write_job(
    fd: int,
    chunks: list[bytes],
    hashers: Sequence[Hasher],
    position: int,
    progress: list[int],
    state: _WriterState,
) -> None:
    """One coalesced buffer, in the appender's writer thread: hash, write at ``position`` (the
    file's position), start its writeback. Nothing after a failed job is written."""
    if state.failed:
        raise OSError(errno.EIO, "an earlier write of this request failed")
    if _fenced_off(state):  # checked in the writer thread, right before the bytes go out
        state.failed = True
        raise OSError(errno.ESTALE, _FENCED)
    try:
        _hash_and_write(fd, chunks, hashers, progress)
    except BaseException:
        state.failed = True
        raise
    _start_writeback(fd, position, progress[0])


def _hash_only(chunks: list[bytes], hashers: Sequence[Hasher]) -> None:
    for chunk in chunks:
        for hasher in hashers:
            hasher.update(chunk)


def _hash_and_write(
    fd: int, chunks: list[bytes], hashers: Sequence[Hasher], progress: list[int]
) -> None:
    """Hash and write the received pieces as they are (``writev``): no copy on the event loop."""
    for chunk in chunks:
        for hasher in hashers:
            hasher.update(chunk)
    pending: list[bytes | memoryview] = [chunk for chunk in chunks if chunk]
    index = 0
    while index < len(pending):
        count = os.writev(fd, pending[index : index + _IOV_MAX])
        if not count:
            raise OSError(errno.EIO, "short write")
        progress[0] += count
        while count:  # skip what was written; a partly written piece continues from its middle
            head = pending[index]
            if count >= len(head):
                count -= len(head)
                index += 1
            else:
                pending[index] = memoryview(head)[count:]
                count = 0


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _hash_file(path: Path, hasher: Hasher) -> bytes:
    with path.open("rb", buffering=0) as file:
        buffer = bytearray(HASH_CHUNK)
        view = memoryview(buffer)
        while count := file.readinto(buffer):
            hasher.update(view[:count])
    return hasher.digest()


def _concatenate(target: Path, parts: Sequence[Path], reserve: bool) -> int:
    total = 0
    with target.open("r+b", buffering=0) as out:
        out.truncate(0)
        if reserve:  # the whole result's blocks first: a full disk fails before any copy
            space.reserve(out.fileno(), 0, sum(part.stat().st_size for part in parts))
        for part in parts:
            with part.open("rb", buffering=0) as source:
                total += _copy(source.fileno(), out.fileno(), os.fstat(source.fileno()).st_size)
        _fdatasync(out.fileno())
    return total


def _copy(source: int, target: int, size: int) -> int:
    """Kernel-side copy (reflink or in-kernel on most filesystems); read/write as a fallback."""
    copied = 0
    try:
        while copied < size:
            count = os.copy_file_range(source, target, min(size - copied, COPY_CHUNK))
            if not count:
                break
            copied += count
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    if copied < size:
        os.lseek(source, copied, os.SEEK_SET)
        while chunk := os.read(source, min(HASH_CHUNK, size - copied)):
            os.write(target, chunk)
            copied += len(chunk)
    if copied != size:
        raise OSError(errno.EIO, "part changed size while being concatenated")
    return copied


def _stored_before(root: Path, timestamp: float) -> list[StorageKey]:
    found: list[StorageKey] = []
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            if not _is_upload_id(entry.name):
                continue  # not an upload's bytes (a temporary or foreign file): never touched
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < timestamp:
                    found.append(StorageKey(entry.name))
            except FileNotFoundError:
                continue
    return found


def _is_upload_id(name: str) -> bool:
    try:
        check_upload_id(name)
    except NotFound:
        return False
    return True


def _create_file(path: Path, length: int | None, min_free: int) -> None:
    """The new, empty file, durable, with ``length`` bytes reserved; on a refusal or a failure
    nothing is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    free = space.free_bytes(path.parent)
    if free - (length or 0) < min_free:
        needed = f"{length} bytes needed and " if length else ""
        raise StorageFull(
            f"cannot create upload: storage is full ({free} bytes free, "
            f"{needed}{min_free} kept free)"
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        try:
            if length:
                space.reserve(fd, 0, length)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
            _fsync_dir(path.parent)
        raise


def _reserve_file(path: Path, start: int, end: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            space.reserve(fd, max(start, 0), end)
        except OSError:
            with contextlib.suppress(OSError):
                space.release_unused(fd)  # what a failed reservation may have allocated
            raise
    finally:
        os.close(fd)


def _truncate_file(path: Path, length: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        # Only ever cut: ftruncate past the end would invent zero bytes.
        os.ftruncate(fd, min(length, os.fstat(fd).st_size))
        os.fsync(fd)
    finally:
        os.close(fd)


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
        file: AsyncFileIO,
        offset: int,
        buffer_size: int,
        hashers: Sequence[Hasher] = (),
        *,
        pool: ThreadPoolExecutor,
        fence: Fence | None = None,
    ) -> None:
        self._file = file
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
        self._writer = _SerialQueue(pool)
        self._side = _SerialQueue(pool)
        self._state = _WriterState()
        self._state.fence = fence
        self._failed = False  # a write failed: later bytes must never land behind its prefix

    @property
    def offset(self) -> int:
        return self._start + self._accepted

    async def write(self, data: bytes) -> None:
        if self._failed:
            raise StorageError("cannot write upload data: an earlier write failed")
        if _fenced_off(self._state):
            self._failed = True
            self._take_chunks()
            raise StorageError(f"cannot write upload data: {_FENCED}")
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
            side = self._side.submit(partial(_hash_only, chunks, self._side_hashers))
        progress = [0]
        job = self._writer.submit(
            partial(
                _write_job,
                self._file.fileno(),
                chunks,
                self._hashers,
                self._start + self._submitted,
                progress,
                self._state,
            )
        )
        self._submitted += sum(len(chunk) for chunk in chunks)
        self._in_flight.append((job, side, progress))

    async def _complete_oldest(self) -> None:
        job, side, progress = self._in_flight.popleft()
        try:
            with anyio.CancelScope(shield=True):  # its bytes must be counted, whoever cancels
                if side is not None:
                    await side
                await job
        except OSError as exc:
            raise _storage_error(exc, "write upload data") from exc
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
            await anyio.to_thread.run_sync(_fdatasync, self._file.fileno())
        except OSError as exc:
            raise _storage_error(exc, "make upload data durable") from exc

    async def aclose(self) -> None:
        self._take_chunks()
        with contextlib.suppress(StorageError):
            await self._drain()
        # Nothing unsynced is ever reported, so a failing close loses nothing promised.
        with contextlib.suppress(OSError):
            await self._file.close()


class LocalStore:
    # Writer threads run at this nice value (Linux): when every core is busy, the event loop that
    # answers all requests gets the CPU first, and writes, whose backlog is bounded per upload,
    # wait a little. Measured on 2 saturated cores: a GET's p99 latency beside 4 uploads fell
    # from 10-15 ms to 6-7 ms, max from 24-61 ms to 6-11 ms, with the same throughput.
    WRITER_NICE = 10

    def __init__(
        self,
        root: Path,
        *,
        buffer_size: int = 1024 * 1024,
        write_threads: int = 32,
        writer_nice: int = WRITER_NICE,
        min_free: int = 0,
        reserve_space: bool = True,
    ) -> None:
        self._root = root
        self._min_free = min_free  # bytes a creation must leave free (the database's room)
        self._reserve_space = reserve_space  # off: no upload's space is set aside (nor checked)
        self._buffer_size = buffer_size
        self._write_threads = write_threads
        self._writer_nice = writer_nice
        self._pool: ThreadPoolExecutor | None = None  # writes and digests of every upload

    def _writers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self._write_threads,
                thread_name_prefix="upload-writer",
                initializer=_lower_priority,
                initargs=(self._writer_nice,),
            )
        return self._pool

    def path(self, key: StorageKey | str) -> Path:
        return self._root / check_upload_id(key if isinstance(key, str) else key.upload_id)

    async def create(self, upload_id: str, length: int | None = None) -> StorageKey:
        path = self.path(upload_id)
        try:
            reserved = length if self._reserve_space else None
            await anyio.to_thread.run_sync(_create_file, path, reserved, self._min_free)
        except OSError as exc:
            raise _storage_error(exc, "create upload") from exc
        return StorageKey(upload_id)

    async def reserve(self, key: StorageKey, start: int, end: int) -> None:
        if not self._reserve_space:
            return
        with _translated("reserve space for the upload"):
            await anyio.to_thread.run_sync(_reserve_file, self.path(key), start, end)

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> LocalAppender:
        path = self.path(key)
        with _translated("open upload"):
            # Unbuffered: each coalesced buffer is one write in one worker-thread hop.
            file = await aiofiles.open(path, "r+b", buffering=0)
        try:
            size = await file.seek(0, os.SEEK_END)
            if size < offset:
                raise StorageError(f"upload data holds {size} bytes, fewer than offset {offset}")
            if size > offset:
                await file.truncate(offset)
            await file.seek(offset)
        except BaseException as exc:
            await file.close()
            if isinstance(exc, OSError):
                raise _storage_error(exc, "open upload") from exc
            raise
        return LocalAppender(
            file, offset, self._buffer_size, hashers, pool=self._writers(), fence=fence
        )

    async def stored_before(self, moment: datetime) -> list[StorageKey]:
        with _translated("list uploads"):
            return await anyio.to_thread.run_sync(_stored_before, self._root, moment.timestamp())

    async def size(self, key: StorageKey) -> int:
        with _translated("inspect upload"):
            stat = await aiofiles.os.stat(self.path(key))
        return stat.st_size

    async def discard_tail(self, key: StorageKey, length: int) -> None:
        with _translated("truncate upload"):
            await anyio.to_thread.run_sync(_truncate_file, self.path(key), length)

    async def read(self, key: StorageKey, start: int, end: int) -> AsyncIterator[bytes]:
        path = self.path(key)
        with _translated("open upload"):
            file = await aiofiles.open(path, "rb")
        try:
            remaining = end - start
            try:
                await file.seek(start)
            except OSError as exc:
                raise _storage_error(exc, "read upload data") from exc
            while remaining > 0:
                try:
                    chunk = await file.read(min(READ_CHUNK, remaining))
                except OSError as exc:
                    raise _storage_error(exc, "read upload data") from exc
                if not chunk:
                    raise StorageError("upload data is shorter than its offset")
                remaining -= len(chunk)
                yield chunk
        finally:
            await file.close()

    async def delete(self, key: StorageKey) -> None:
        try:
            await aiofiles.os.remove(self.path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _storage_error(exc, "delete upload") from exc

    async def digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        with _translated("read upload data"):
            return await anyio.to_thread.run_sync(_hash_file, self.path(key), hasher)

    async def concatenate(self, key: StorageKey, parts: Sequence[StorageKey]) -> int:
        paths = [self.path(part) for part in parts]
        with _translated("concatenate uploads", missing="a partial upload's data is missing"):
            return await anyio.to_thread.run_sync(
                _concatenate, self.path(key), paths, self._reserve_space
            )

    async def check(self) -> None:
        try:
            await aiofiles.os.makedirs(self._root, exist_ok=True)
            writable = await aiofiles.os.access(self._root, os.W_OK)
        except OSError as exc:
            raise _storage_error(exc, "reach the data directory") from exc
        if not writable:
            raise StorageError(f"data directory {self._root} is not writable")

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await anyio.to_thread.run_sync(pool.shutdown)  # lets queued writes end first
