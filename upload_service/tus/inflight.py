"""The PATCHes of this process that have not answered yet, by upload (``InFlight``): what a HEAD
waits for, so that a client whose request broke off and who asks at once where to resume learns
the offset that request ends at, not an older one that its next PATCH would find stale (409).

A request broken off by its client still holds the upload for a few milliseconds after the
client is gone: it reads what arrived, makes it durable and commits. A HEAD in that window, and
even one that this process reads before the broken request's first bytes (the two come on
different connections, in no order), would answer the older offset. So HEAD first lets the event
loop turn a few times (requests whose bytes have arrived reach the handler), then waits while a
PATCH of this process runs on the upload, with one exception: a PATCH still reading its body
after a short window (``LIVE``) is alive, its client sending (or pausing), and is not waited for;
its committed offset is the answer, as the tus specification has it. A broken-off request
stops reading within about a millisecond of its client's close, then commits, then answers.

Requests in other processes or on other replicas are not seen here; a HEAD waits for their lock
(``Reconciler.reconcile_if_idle``) instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.lowlevel

LIVE = 0.1  # seconds: a PATCH still reading its body this long after a HEAD began is alive
TURNS = 3  # turns of the event loop a HEAD lets pass first: a read, a parse, a handler's start
POLL = 0.005  # seconds between looks at a PATCH that is still reading, within the window


class Arrivals:
    """One upload's running PATCHes in this process: how many, and how many still read a body."""

    __slots__ = ("count", "ended", "reading")

    def __init__(self) -> None:
        self.count = 0
        self.reading = 0
        self.ended = anyio.Event()  # set once none runs


class Reading:
    """One PATCH's body being read; ``done`` once it ended, broke off or failed (idempotent)."""

    __slots__ = ("_arrivals",)

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals: Arrivals | None = arrivals
        arrivals.reading += 1

    def done(self) -> None:
        if self._arrivals is not None:
            self._arrivals.reading -= 1
            self._arrivals = None


class InFlight:
    def __init__(self) -> None:
        self._uploads: dict[str, Arrivals] = {}

    @contextmanager
    def patch(self, upload_id: str) -> Iterator[Reading]:
        """Count a PATCH on ``upload_id`` while the block runs (until it answers); the caller
        says when its body is done (``Reading.done``; at the latest, the block's end)."""
        arrivals = self._uploads.get(upload_id)
        if arrivals is None:
            arrivals = self._uploads[upload_id] = Arrivals()
        arrivals.count += 1
        reading = Reading(arrivals)
        try:
            yield reading
        finally:
            reading.done()
            arrivals.count -= 1
            if not arrivals.count:
                del self._uploads[upload_id]
                arrivals.ended.set()

    def running(self, upload_id: str) -> bool:
        return upload_id in self._uploads

    async def settled(self, upload_id: str, *, wait: float) -> bool:
        """Wait until no PATCH of this process runs on ``upload_id``: True then. False when one
        still reads its body ``LIVE`` seconds on (alive), or after ``wait`` seconds."""
        for _ in range(TURNS):
            await anyio.lowlevel.cancel_shielded_checkpoint()
        began = time.monotonic()
        deadline = began + wait
        while (arrivals := self._uploads.get(upload_id)) is not None:
            now = time.monotonic()
            if now >= deadline or (arrivals.reading and now >= began + LIVE):
                return False
            step = min(POLL, deadline - now) if arrivals.reading else deadline - now
            with anyio.move_on_after(step):
                await arrivals.ended.wait()
        return True
