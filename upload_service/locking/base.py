"""Per-upload mutual exclusion.

Every request that changes an upload (PATCH, creation with data, DELETE, reconciliation) holds the
upload's lock. A request that wants a held lock first asks the holder to let go (``Lease``
release request): a PATCH whose client vanished without closing its connection would otherwise
block the client's reconnect until TCP gives up. The holder stops reading its body, makes what it
received durable, commits and releases; the waiter then proceeds or gets 423 after its timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Lease:
    """Handed to the holder of a lock.

    ``token`` is a fencing token: it grows strictly with every grant of any key by a locker that
    spans hosts, so storage and the database can refuse a holder that a newer one has replaced.
    Lockers whose exclusion the kernel guarantees (one process, one host) hand out ``None``.
    ``lost`` turns true when the locker can no longer vouch for the lock (its connection to the
    lock service failed): the holder must stop writing at once; a release is requested too.
    """

    def __init__(self, token: int | None = None) -> None:
        self._callbacks: list[Callable[[], object]] = []
        self.release_requested = False
        self.token = token
        self.lost = False

    def mark_lost(self) -> None:
        self.lost = True
        self.request_release()

    def on_release_request(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (now, if already requested) when another request wants the lock."""
        if self.release_requested:
            callback()
        else:
            self._callbacks.append(callback)

    def request_release(self) -> None:
        if self.release_requested:
            return
        self.release_requested = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class Locker(Protocol):
    def lock(
        self, key: str, *, wait: float, preempt: bool = True
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold ``key`` for the ``async with`` block.

        With ``preempt`` the current holder is asked to release. Raises ``Locked`` (423) when the
        lock is not free within ``wait`` seconds (0: try once), and a locker that depends on a
        lock service raises ``Unavailable`` (503, with ``Retry-After``) when it cannot reach it.
        Leaving the block never raises for the lock service's sake: a lease whose lock could not
        be vouched for was marked ``lost`` instead.
        """
        ...

    async def aclose(self) -> None: ...
