"""The writer threads of the local store: where an appender's bytes are hashed and written.

Crash story: a write job puts its bytes into the page cache at the file's position and asks the
kernel to start writing them back; none of that survives a kill -9 or a power cut for sure, and
none of it is ever reported as durable (only ``LocalAppender.sync``'s fdatasync is). Jobs of one
appender run in order, one at a time, and nothing after a failed job is written, so what reaches
the file is always a prefix of the request's bytes. The fence is checked in the writer thread
right before the bytes go out: once the upload's lock is lost, nothing more reaches the file.
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
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast

from upload_service.storage.base import LOCK_LOST, Fence, Hasher

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_SYNC_FILE_RANGE_WRITE = 2


def lower_priority(nice: int) -> None:
    """Runs first in each writer thread: on Linux, where threads have a nice value of their own,
    this one yields the CPU to the event loop's thread when the machine is saturated."""
    if nice and sys.platform == "linux":
        with contextlib.suppress(OSError):  # raising one's own nice value is always allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class SerialQueue:
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


class WriterState:
    """Shared by one appender's writes, which run one after another in its writer thread."""

    failed = False
    fence: Fence | None = None

    def fenced_off(self) -> bool:
        return self.fence is not None and self.fence.lost


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


def write_job(
    fd: int,
    chunks: list[bytes],
    hashers: Sequence[Hasher],
    position: int,
    progress: list[int],
    state: WriterState,
) -> None:
    """One coalesced buffer, in the appender's writer thread: hash, write at ``position`` (the
    file's position), start its writeback. Nothing after a failed job is written."""
    if state.failed:
        raise OSError(errno.EIO, "an earlier write of this request failed")
    if state.fenced_off():  # checked in the writer thread, right before the bytes go out
        state.failed = True
        raise OSError(errno.ESTALE, LOCK_LOST)
    try:
        _hash_and_write(fd, chunks, hashers, progress)
    except BaseException:
        state.failed = True
        raise
    _start_writeback(fd, position, progress[0])


def hash_only(chunks: list[bytes], hashers: Sequence[Hasher]) -> None:
    for chunk in chunks:
        for hasher in hashers:
            hasher.update(chunk)


def _hash_and_write(
    fd: int, chunks: list[bytes], hashers: Sequence[Hasher], progress: list[int]
) -> None:
    """Hash and write the received pieces as they are (``writev``): no copy on the event loop."""
    hash_only(chunks, hashers)
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
