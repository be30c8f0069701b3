"""Garbage collection around start-up: no full collection on the event loop while serving begins.

Start-up allocates most of the objects a process ever holds: modules, the app, the S3 client's
service models. A full (generation 2) collection walks all of them, and Python starts one from
whichever thread allocates next; on the event loop that took 170-240 ms here, right after the S3
client was built. So automatic collection is off during start-up; once it is done, one collection
runs in a worker thread (the loop has nothing to do yet), and what survives is frozen (``gc.freeze``:
kept out of every later collection), so the collections that serving triggers only walk what
serving allocated. At shutdown it is unfrozen, for a process that goes on.

That is for a server process, which starts one app. A process that builds many apps (the test
suite: one a test) turns it off (``enabled=False``): each collection would walk the whole heap of
that process, which costs each app start-up more than everything else it does.
"""

from __future__ import annotations

import gc
from types import TracebackType

import anyio


class StartUpHeap:
    def __init__(self, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._was_enabled = False

    def __enter__(self) -> StartUpHeap:
        if self._enabled:
            self._was_enabled = gc.isenabled()
            gc.disable()
        return self

    async def settle(self) -> None:
        """Start-up is done: collect off the loop, freeze the survivors, collect as usual again."""
        if not self._enabled:
            return
        await anyio.to_thread.run_sync(gc.collect)
        gc.freeze()
        if self._was_enabled:
            gc.enable()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._enabled:
            return
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
