"""A Locker that reports lock waits and release requests to ``Events``, around another Locker.

A release request is counted by the holder's lease, so requests from other processes and replicas
count too; it is honoured when the holder then lets go of the lock with its lease intact.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from upload_service.errors import Locked
from upload_service.events import Events
from upload_service.locking.base import Lease, Locker


class MeteredLocker:
    def __init__(self, inner: Locker, events: Events) -> None:
        self.inner = inner
        self._events = events

    def lock(
        self, key: str, *, wait: float, preempt: bool = True
    ) -> AbstractAsyncContextManager[Lease]:
        return self._lock(key, wait=wait, preempt=preempt)

    @asynccontextmanager
    async def _lock(self, key: str, *, wait: float, preempt: bool) -> AsyncIterator[Lease]:
        started = time.monotonic()
        acquired = False
        try:
            async with self.inner.lock(key, wait=wait, preempt=preempt) as lease:
                acquired = True
                self._events.lock_waited(time.monotonic() - started, acquired=True)
                lease.on_release_request(self._events.release_requested)
                try:
                    yield lease
                finally:
                    if lease.release_requested and not lease.lost:
                        self._events.release_honoured()
        except Locked:
            if not acquired:
                self._events.lock_waited(time.monotonic() - started, acquired=False)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()
