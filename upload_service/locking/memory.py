"""Locks for one process: enough for a single server process; several need a shared locker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from upload_service.errors import Locked
from upload_service.locking.base import Lease


@dataclass
class _Entry:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    lease: Lease | None = None
    users: int = 0


class MemoryLocker:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def held(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.lock.locked()

    @asynccontextmanager
    async def lock(self, key: str, *, wait: float, preempt: bool = True) -> AsyncIterator[Lease]:
        entry = self._entries.setdefault(key, _Entry())
        entry.users += 1
        try:
            if entry.lease is not None and preempt:
                entry.lease.request_release()
            acquired = False
            try:
                entry.lock.acquire_nowait()
                acquired = True
            except anyio.WouldBlock:
                with anyio.move_on_after(wait):
                    await entry.lock.acquire()
                    acquired = True
            if not acquired:
                raise Locked("upload is in use by another request; retry shortly")
            lease = entry.lease = Lease()
            try:
                yield lease
            finally:
                entry.lease = None
                entry.lock.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    async def aclose(self) -> None:
        return None
