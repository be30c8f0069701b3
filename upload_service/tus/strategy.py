"""How one request's written bytes become committed: the ``Strategy`` the receive loop
(``receive.Receiver``) drives, with its two kinds, ``checkpointing.Checkpointing`` (no checksum)
and ``all_or_nothing.AllOrNothing`` (``Upload-Checksum``). Every step runs under the upload's
lock; the loop writes each chunk through the appender, then calls ``written``; once the body
stops it calls ``end`` (shielded, before the appender closes) and ``closed`` after.

Crash story of what the base does: between commits it only shows progress (``received``),
which commits nothing. A kill -9 leaves ``received`` possibly past the durable bytes and the
offset at the last commit; ``received`` is never taken for the offset (a read shows the larger
of the two as progress, and the next request starts from the offset).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import anyio

from upload_service.errors import ServiceError, StorageError
from upload_service.locking.base import Lease
from upload_service.storage.base import Appender
from upload_service.tus.commit import Committer
from upload_service.tus.types import HandlerConfig
from upload_service.uploads import Upload


class Strategy(ABC):
    """A step after every chunk written (the last, overflowing one excepted), the end once the
    body stops (shielded, before the appender closes) and a step after it closed."""

    def __init__(
        self,
        committer: Committer,
        config: HandlerConfig,
        upload: Upload,
        appender: Appender,
        lease: Lease,
    ) -> None:
        self.upload = upload  # the committed upload, advanced by the strategy
        self._committer = committer
        self._config = config
        self._appender = appender
        self._lease = lease
        self._last_progress = time.monotonic()

    async def written(self) -> None:
        await self._progress(time.monotonic())

    async def _progress(self, now: float) -> None:
        """Show how much arrived (``received``), committing nothing."""
        if now - self._last_progress >= self._config.progress_seconds:
            with anyio.CancelScope(shield=True):
                await self._committer.show_received(self.upload, self._appender.offset)
            self._last_progress = now

    @abstractmethod
    async def end(
        self, complete_body: bool, failure: StorageError | None, overflow: ServiceError | None
    ) -> tuple[StorageError | None, ServiceError | None]:
        """Commit what this strategy keeps of the request; returns the failure and the error to
        raise after the appender closed (``overflow``: 413, 460, or a request not made durable whole)."""

    async def closed(self) -> None:
        return None
