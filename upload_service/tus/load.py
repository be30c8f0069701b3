"""Loading an upload for a request: the one place that checks that it exists, that the caller
may reach it (another owner's upload does not exist for them) and that it is live; under the
upload's lock, read and claimed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from upload_service.auth.principal import Principal
from upload_service.errors import Conflict, Gone, NotFound
from upload_service.locking.base import Lease
from upload_service.storage.base import check_upload_id
from upload_service.tus.request import TusRequest
from upload_service.tus.types import LeaseLost
from upload_service.uploads import Upload, UploadState

if TYPE_CHECKING:
    from upload_service.db.base import UploadRepository


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
        self, request: TusRequest, lease: Lease, *, allow_expired: bool = False
    ) -> Upload:
        """``load`` under the upload's lock, claiming it (see ``claimed``)."""
        upload = await self.claimed(check_upload_id(request.target), lease)
        return self.live(self.reachable(upload, request.principal), allow_expired=allow_expired)

    async def load(self, request: TusRequest, *, allow_expired: bool = False) -> Upload:
        """The live upload the request names (not under its lock)."""
        return self.live(await self.found(request), allow_expired=allow_expired)

    async def found(self, request: TusRequest) -> Upload:
        """The upload the request names, in any state (the JSON API shows ended ones too)."""
        upload = self.reachable(
            await self._repo.get(check_upload_id(request.target)), request.principal
        )
        if upload is None:
            raise NotFound("no such upload")
        return upload

    async def check_reachable(self, request: TusRequest) -> None:
        """Before taking an upload's lock: ``NotFound`` unless the caller may reach the upload,
        so another owner's request neither preempts a running PATCH nor claims the row. The
        owner never changes, so an unlocked read decides. Nothing to check for the anonymous
        caller of an open service, who reaches everything (the locked load finds unknown ids)."""
        if not request.principal.restricted:
            return
        await self.found(request)

    @staticmethod
    def reachable(upload: Upload | None, principal: Principal) -> Upload | None:
        """The upload if the caller may reach it; None (no such upload) otherwise: another
        owner's upload does not exist for this caller, on every route."""
        if upload is None or not principal.may_reach(upload.id, upload.owner, upload.ticket):
            return None
        return upload

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
