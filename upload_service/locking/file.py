"""Locks shared by every process on one host that points at the same directory (``serve --workers``).

Each key is a file locked with ``flock(2)``. The kernel drops the locks of a process that dies, so
kill -9 leaves nothing stale. The holder unlinks the file before letting go, and whoever then locks
an unlinked file notices (its inode is no longer the one at the path) and tries again, so lock
files never pile up.

A release request crosses processes as a marker file ``<key>.release``: waiters that preempt
create it, and each holder's watcher polls for it (every ``watch`` seconds) and asks its lease to
release. Within one process the request is also handed over at once. Every file operation runs
in a worker thread; the loop never blocks on the file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from upload_service import threads
from upload_service.errors import Locked
from upload_service.locking.base import Lease

logger = logging.getLogger("upload_service.locking")

_KEY = re.compile(r"[0-9A-Za-z_-]{1,128}")


def _try_lock(path: Path) -> int | None:
    """The file descriptor holding ``path`` exclusively, or None if another holder has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # its last holder unlinked this file meanwhile: lock the one there now


def _try_acquire(path: Path, marker: Path) -> int | None:
    """``_try_lock``, and once held, the release request an earlier holder was left taken: it is
    not meant for this one. One worker-thread call for both."""
    fd = _try_lock(path)
    if fd is not None:
        try:
            _take_request(marker)
        except BaseException:
            _unlock(path, marker, fd)
            raise
    return fd


def _unlock(path: Path, marker: Path, fd: int) -> None:
    for stale in (marker, path):  # unlinked while still held: nobody can lock a stale file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    os.close(fd)


def _touch(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))


def _take_requests(root: Path, held: frozenset[str]) -> list[str]:
    """Take the release requests waiting for keys this process holds (one scan for them all);
    requests for other processes' keys stay for their watchers."""
    taken: list[str] = []
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return taken
    with entries:
        wanted = [
            entry.name.removesuffix(".release")
            for entry in entries
            if entry.name.endswith(".release")
        ]
    for key in held.intersection(wanted):
        if _take_request(root / f"{key}.release"):
            taken.append(key)
    return taken


def _take_request(marker: Path) -> bool:
    try:
        os.unlink(marker)
    except FileNotFoundError:
        return False
    return True


class FileLocker:
    def __init__(self, root: Path, *, poll: float = 0.01, watch: float = 0.1) -> None:
        self._root = root
        self._poll = poll
        self._watch = watch
        self._leases: dict[str, Lease] = {}  # held by this process, for immediate requests
        self._made_root = False
        self._watcher: asyncio.Task[None] | None = None  # runs while this process holds leases

    def _paths(self, key: str) -> tuple[Path, Path]:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a lock key: {key!r}")
        return self._root / f"{key}.lock", self._root / f"{key}.release"

    async def _acquire(self, path: Path, marker: Path) -> int | None:
        if not self._made_root:
            await anyio.Path(self._root).mkdir(parents=True, exist_ok=True)
            self._made_root = True
        return await threads.run_sync(_try_acquire, path, marker)

    @asynccontextmanager
    async def lock(self, key: str, *, wait: float, preempt: bool = True) -> AsyncIterator[Lease]:
        path, marker = self._paths(key)
        fd = await self._wait_for(key, path, marker, wait=wait, preempt=preempt)
        lease = self._leases[key] = Lease()
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch_requests())
        try:
            yield lease
        finally:
            with anyio.CancelScope(shield=True):
                if self._leases.get(key) is lease:
                    del self._leases[key]
                await threads.run_sync(_unlock, path, marker, fd)

    async def _wait_for(
        self, key: str, path: Path, marker: Path, *, wait: float, preempt: bool
    ) -> int:
        deadline = anyio.current_time() + wait
        while True:
            fd = await self._acquire(path, marker)
            if fd is not None:
                return fd
            if preempt:
                local = self._leases.get(key)
                if local is not None:
                    local.request_release()
                await threads.run_sync(_touch, marker)
            if anyio.current_time() >= deadline:
                raise Locked("upload is in use by another request; retry shortly")
            await anyio.sleep(min(self._poll, max(0.0, deadline - anyio.current_time())))

    async def _watch_requests(self) -> None:
        """One scan every ``watch`` seconds for all the leases this process holds; ends (and is
        started again by the next lock) when it holds none."""
        try:
            while self._leases:
                await anyio.sleep(self._watch)
                held = frozenset(self._leases)
                try:
                    taken = await threads.run_sync(_take_requests, self._root, held)
                except OSError:
                    logger.exception("cannot watch %s for release requests", self._root)
                    continue
                for key in taken:
                    lease = self._leases.get(key)
                    if lease is not None:
                        lease.request_release()
        finally:
            self._watcher = None

    async def aclose(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
