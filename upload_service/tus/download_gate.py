"""The gate a download passes before any byte is served (``DownloadGate``): the upload exists,
the caller may reach it, it is not a partial upload and it is ready, waiting a little for the
verdict of one still being verified. What to send of it is decided in ``download``, without
touching the bytes; the bytes are then read from the store.

Crash story: none of its own. A download writes nothing; the verdict it waits for is read from
the database (the verification may run on any replica), so a replica killed mid-verification
leaves the upload verifying for start-up to resume, and the waiting download answers 503 with
``Retry-After`` in the meantime. A ready upload never changes, so a download cut short by a kill
-9 on either side is resumed with a range.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import anyio

from upload_service.db.base import UploadRepository
from upload_service.errors import Forbidden, ServiceError, Unavailable
from upload_service.storage.base import Store
from upload_service.tus.load import UploadLoader
from upload_service.tus.request import TusRequest
from upload_service.uploads import Upload, UploadState

# How often a download waiting for a verdict reads the upload again (the verification may run on
# any replica: the database tells).
VERDICT_POLL = 0.2


class DownloadGate:
    def __init__(
        self,
        *,
        store: Store,
        repository: UploadRepository,
        loader: UploadLoader,
        verify_wait: float,
    ) -> None:
        self._store = store
        self._repo = repository
        self._loader = loader
        self._verify_wait = verify_wait

    async def downloadable(self, request: TusRequest) -> Upload:
        """The ready upload the request may download. One still being verified is waited for,
        up to ``verify_wait`` seconds (then 503 with ``Retry-After``); one that failed its
        verification meanwhile is a 410, like any failed upload. A partial upload is never
        served (403): its bytes may lie anywhere in a file, so the content rules that check a
        file's first bytes never saw them; a final upload made of it is checked and served."""
        upload = await self._loader.load(request)
        if upload.is_partial:
            raise Forbidden(
                "a partial upload is not served as a download: download a final upload made of it"
            )
        if upload.is_final and upload.state is UploadState.RECEIVING:
            upload = await self._assembled(request, upload)
        if upload.state is UploadState.VERIFYING:
            upload = await self._verdict(request, upload)
        if upload.state is not UploadState.READY:
            raise ServiceError(
                f"upload is not finished ({upload.offset} of {upload.length} bytes)",
                status=409,
                code="not_finished",
            )
        return upload

    async def _assembled(self, request: TusRequest, upload: Upload) -> Upload:
        """A final upload not assembled yet: once every part has all its bytes, its assembly is
        under way (on any replica) and is waited for like a verdict; before that it waits for
        its parts, which may take any time: 409 at once, saying how many are done."""
        parts = await self._repo.get_many(upload.parts)
        done = [
            part_id
            for part_id in upload.parts
            if (part := parts.get(part_id)) is not None
            and part.state in (UploadState.VERIFYING, UploadState.READY)
        ]
        if len(done) < len(upload.parts):
            raise ServiceError(
                f"final upload waits for its partial uploads ({len(done)} of "
                f"{len(upload.parts)} complete)",
                status=409,
                code="not_finished",
            )
        return await self._waited(
            request, upload, UploadState.RECEIVING, "final upload is being assembled", "assembling"
        )

    async def _verdict(self, request: TusRequest, upload: Upload) -> Upload:
        return await self._waited(
            request,
            upload,
            UploadState.VERIFYING,
            "upload is complete and being verified",
            "verifying",
        )

    async def _waited(
        self, request: TusRequest, upload: Upload, state: UploadState, doing: str, code: str
    ) -> Upload:
        """The upload once it has left ``state``, read again every ``VERDICT_POLL`` seconds for
        up to ``verify_wait`` seconds; then 503 with ``Retry-After``."""
        wait = self._verify_wait
        deadline = anyio.current_time() + wait
        while upload.state is state:
            left = deadline - anyio.current_time()
            if left <= 0:
                retry = max(1, math.ceil(min(wait, 5.0)))
                raise Unavailable(
                    f"{doing}; retry shortly", code=code, headers={"Retry-After": str(retry)}
                )
            await anyio.sleep(min(VERDICT_POLL, left))
            upload = await self._loader.load(request)
        return upload

    def read(self, upload: Upload, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes ``start`` to ``end`` of a ready upload (``downloadable``)."""
        return self._store.read(upload.storage, start, end)
