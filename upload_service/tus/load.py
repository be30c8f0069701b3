"""Loading an upload for a request: it exists and is live, read under its lock and claimed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from upload_service.errors import Conflict, Gone, NotFound
from upload_service.locking.base import Lease
from upload_service.storage.base import check_upload_id
from upload_service.tus.receive import LeaseLost
from upload_service.uploads import Upload, UploadState

if TYPE_CHECKING:
    from upload_service.repository import UploadRepository


class UploadLoader:
    def __init__(self, *, repository: UploadRepository, clock: Callable[[], datetime]) -> None:
        self._repo = repository
        self._clock = clock

    async def claimed(self, upload_id: str, lease: Lease) -> Upload | None:
        """The upload, read under its lock; a holder with a fencing token claims it first, so
        commits of any older holder are refused from now on."""
        if lease.token is None:
            return await self._repo.get(upload_id)
        try:
            return await self._repo.claim(upload_id, lease.token)
        except Conflict:
            raise LeaseLost() from None

    async def hold(self, upload: Upload, lease: Lease) -> Upload:
        """An upload this request has just created, now under its lock: claimed when the lock
        fences (see ``claimed``), else as it is (nobody else can have changed it)."""
        if lease.token is None:
            return upload
        return self.live(await self.claimed(upload.id, lease))

    async def load_held(
        self, upload_id: str, lease: Lease, *, allow_expired: bool = False
    ) -> Upload:
        """``load`` under the upload's lock, claiming it (see ``claimed``)."""
        return self.live(
            await self.claimed(check_upload_id(upload_id), lease), allow_expired=allow_expired
        )

    async def load(self, upload_id: str, *, allow_expired: bool = False) -> Upload:
        upload = await self._repo.get(check_upload_id(upload_id))
        return self.live(upload, allow_expired=allow_expired)

    def live(self, upload: Upload | None, *, allow_expired: bool = False) -> Upload:
        if upload is None:
            raise NotFound("no such upload")
        if upload.state is UploadState.TERMINATED:
            raise Gone("upload was terminated")
        if upload.state is UploadState.EXPIRED or (
            not allow_expired and upload.expired(self._clock())
        ):
            raise Gone("upload has expired")
        if upload.state is UploadState.FAILED:
            raise Gone(f"upload failed: {upload.failure or 'unknown reason'}")
        return upload
