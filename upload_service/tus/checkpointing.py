"""The checkpointing strategy (a request without ``Upload-Checksum``): commit what is durable
every ``checkpoint_bytes`` or ``checkpoint_seconds``, and at the end whatever arrived, even of a
body cut off by a disconnect, a preempting request or the shutdown.

Crash story (what a kill -9 at each step leaves):
- between checkpoints: the offset of the last checkpoint; the bytes written since may be in the
  file, uncommitted, and are cut off by start-up reconciliation or the next ``append``; the
  client resumes from the committed offset (a HEAD tells it).
- during a checkpoint: see ``commit`` (sync, then the offset; never the other way round).
- at the end of a cut-off body: the durable prefix is committed as at a checkpoint, so a client
  whose connection broke resumes where its bytes stopped being durable, not at the request's start.
A storage failure (``StorageError``, e.g. a full disk) ends the body: the prefix written before
it is made durable and committed; a commit refused for a full database disk gives some of it
back (``Committer.give_back``).
"""

from __future__ import annotations

import time

import anyio

from upload_service.errors import ServiceError, StorageError, StorageFull
from upload_service.locking.base import Lease
from upload_service.storage.base import Appender, Checkpointer
from upload_service.tus.commit import Committer
from upload_service.tus.strategy import Strategy
from upload_service.tus.types import HandlerConfig, LeaseLost
from upload_service.uploads import Upload


class Checkpointing(Strategy):
    """Commits what is durable every few bytes or seconds, and whatever arrived at the end."""

    def __init__(
        self,
        committer: Committer,
        config: HandlerConfig,
        upload: Upload,
        appender: Appender,
        lease: Lease,
    ) -> None:
        super().__init__(committer, config, upload, appender, lease)
        self._last_checkpoint = self._last_progress
        self._checkpointed = appender.offset  # bytes accepted at the last checkpoint

    async def written(self) -> None:
        now = time.monotonic()
        if (
            self._appender.offset - self._checkpointed >= self._config.checkpoint_bytes
            or now - self._last_checkpoint >= self._config.checkpoint_seconds
        ):
            with anyio.CancelScope(shield=True):
                await self._checkpoint(final=False)
            self._checkpointed = self._appender.offset
            self._last_checkpoint = self._last_progress = time.monotonic()
        else:
            await self._progress(now)

    async def end(
        self, complete_body: bool, failure: StorageError | None, overflow: ServiceError | None
    ) -> tuple[StorageError | None, ServiceError | None]:
        try:
            await self._checkpoint()
        except StorageError as exc:
            failure = failure or exc
            # the written prefix
            try:
                await self._checkpoint()
            except StorageFull as full:
                if not isinstance(failure, StorageFull):
                    raise
                self.upload = await self._committer.give_back(
                    self.upload, self._appender, self._lease, full
                )
        return failure, overflow

    async def _checkpoint(self, *, final: bool = True) -> None:
        """Commit what is durable: all that was written (``final``, or an appender that syncs
        cheaply), else what a ``Checkpointer`` makes durable cheaply."""
        if self._lease.lost:
            raise LeaseLost()  # before the sync: a lost holder flushes nothing more
        if not final and isinstance(self._appender, Checkpointer):
            durable = await self._appender.checkpoint()
        else:
            durable = await self._appender.sync()
        if durable != self.upload.offset:
            self.upload = await self._committer.commit(self.upload, durable, self._lease)
