"""The all-or-nothing strategy (a request with ``Upload-Checksum``): nothing is committed
before the whole body arrived and its digest matched; a mismatch (460), a disconnect or any
error cuts the stored bytes back to where the request started. The digest is compared before
anything is made durable, and only a request made durable whole is committed.

Crash story (what a kill -9 at each step leaves):
- while the body arrives, or after it ended but before the digest is compared: the offset where
  the request started; the request's bytes may be in the file, uncommitted, and are cut off by
  start-up reconciliation or the next ``append``. The client sends the whole request again.
- after the sync but before the commit: the same; the bytes were durable but never committed.
- after the commit: the whole request is durable and committed at once (see ``commit``); no
  prefix of a checksummed request is ever the upload's offset.
- during the cut-back of a rejected request: the offset never moved, so what the cut-back left
  is past it and is cut off as above.
"""

from __future__ import annotations

from upload_service.errors import ServiceError, StorageError
from upload_service.locking.base import Lease
from upload_service.storage.base import Appender, Hasher
from upload_service.tus.checksum import Checksum, ChecksumMismatch
from upload_service.tus.commit import Committer
from upload_service.tus.strategy import Strategy
from upload_service.tus.types import HandlerConfig
from upload_service.uploads import Upload


class AllOrNothing(Strategy):
    """Commits the whole request once its digest matched, else cuts it back off."""

    def __init__(
        self,
        committer: Committer,
        config: HandlerConfig,
        upload: Upload,
        appender: Appender,
        lease: Lease,
        checksum: Checksum,
        request_digest: Hasher | None,
    ) -> None:
        super().__init__(committer, config, upload, appender, lease)
        self._start = upload.offset
        self._checksum = checksum
        self._request_digest = request_digest

    async def end(
        self, complete_body: bool, failure: StorageError | None, overflow: ServiceError | None
    ) -> tuple[StorageError | None, ServiceError | None]:
        if complete_body and failure is None and overflow is None:
            overflow = await self._commit_checked()
        return failure, overflow

    async def _commit_checked(self) -> ServiceError | None:
        assert self._request_digest is not None
        await self._appender.settle()
        if self._request_digest.digest() != self._checksum.digest:
            return ChecksumMismatch(
                f"{self._checksum.algorithm} of the request body does not match "
                "Upload-Checksum; the chunk was discarded"
            )
        durable = await self._appender.sync()
        if durable != self._appender.offset:
            return StorageError(
                "storage could not make the whole checksummed request durable; resend it"
            )
        if durable != self.upload.offset:
            self.upload = await self._committer.commit(self.upload, durable, self._lease)
        return None

    async def closed(self) -> None:
        start = self._start
        if self.upload.offset == start and self._appender.offset != start:
            await self._committer.discard(self.upload)
