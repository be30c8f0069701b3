"""The end of a direct upload (``direct``): the client completes a multipart upload
(``complete``), or a form-POST upload's object turns up (``settle_posts``); either way the real
size is checked against the caps, the declared length and the owner's quota, and the object's
first bytes against the allowed types, before the row moves to ``verifying``. An upload that
breaks a rule is failed with the reason, its bytes deleted and its ticket's use given back
(``refuse``).

Crash story: under the upload's lock, the store completes the object first, then the row moves
(one compare-and-set each: the length, the offset, ``verifying``). Killed between the two, the
row is still receiving while the object is complete: the client's retried ``complete`` finds its
parts gone and the object there, and finishes the row (the next ``settle_posts`` does so for a
form POST). A refusal fails the row before it deletes the bytes, so nothing reads them after.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from upload_service.auth.principal import Principal
from upload_service.db.base import UploadQuery
from upload_service.errors import (
    BadRequest,
    Conflict,
    Locked,
    NotFound,
    QuotaExceeded,
    ServiceError,
    TooLarge,
)
from upload_service.events import Events
from upload_service.lifecycle import Lifecycle
from upload_service.storage.base import DirectStore
from upload_service.tus.content_types import ContentRules
from upload_service.tus.load import UploadLoader
from upload_service.tus.types import Backends, HandlerConfig
from upload_service.uploads import Upload, UploadState, smallest

logger = logging.getLogger("upload_service.direct")

MAX_PART_NUMBER = 10_000  # S3's part numbers are 1..10,000
SETTLE_BATCH = 1000  # receiving direct uploads looked at per pass (the newest first)


def completed_parts(parts: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """The client's list of parts to complete with: 1..10,000, ascending, each with an ETag."""
    if not parts:
        raise BadRequest("parts must list at least one part")
    previous = 0
    for number, etag in parts:
        if not 1 <= number <= MAX_PART_NUMBER:
            raise BadRequest(f"part number must be between 1 and {MAX_PART_NUMBER}, not {number}")
        if number <= previous:
            raise BadRequest("parts must be in ascending order of part number, each once")
        if not etag.strip('"'):
            raise BadRequest(f"part {number} has no ETag")
        previous = number
    return [(number, etag.strip('"')) for number, etag in parts]


class DirectEnd:
    """The end of direct uploads over ``store``."""

    def __init__(
        self,
        *,
        store: DirectStore,
        backends: Backends,
        config: HandlerConfig,
        events: Events,
        rules: ContentRules,
        lifecycle: Lifecycle,
        loader: UploadLoader,
    ) -> None:
        self._direct = store  # the same store as ``backends.store``, as a DirectStore
        self._store = backends.store
        self._repo = backends.repository
        self._locker = backends.locker
        self._clock: Callable[[], datetime] = backends.clock
        self._config = config
        self._events = events
        self._rules = rules
        self._lifecycle = lifecycle
        self._loader = loader

    async def complete(
        self, principal: Principal, upload: Upload, parts: Sequence[tuple[int, str]]
    ) -> Upload:
        """Complete a direct multipart upload from the client's list of parts: the upload is
        then ``verifying`` (answered again as it is when it was completed before)."""
        wanted = completed_parts(parts)
        async with self._locker.lock(upload.id, wait=self._config.lock_timeout) as lease:
            current = self._loader.live(await self._loader.claimed(upload.id, lease))
            if current.state is not UploadState.RECEIVING:
                return current  # completed before: a retried complete
            try:
                stored = {
                    part.number: part for part in await self._direct.direct_parts(current.storage)
                }
            except NotFound:  # completed before a kill (its object is there), or aborted
                size = await self._direct.finished_size(current.storage)
                if size is None:
                    raise Conflict("the upload's parts are gone: it was aborted") from None
            else:
                for number, etag in wanted:
                    part = stored.get(number)
                    if part is None or part.etag.strip('"') != etag:
                        raise BadRequest(f"part {number} was not uploaded with that ETag")
                await self._check_size(current, sum(stored[number].size for number, _ in wanted))
                size = await self._direct.finish_multipart(current.storage, wanted)
            upload = await self.finish(current, size, principal.allowed_types)
        await self._lifecycle.verify_soon(upload.id)
        return upload

    async def _check_size(self, upload: Upload, size: int) -> None:
        """Before anything is completed: the size the parts add up to breaks no cap (else the
        upload fails, its parts deleted: 413, or 403 for the quota)."""
        try:
            self._size_allowed(upload, size)
            if upload.length is None and self._config.quota is not None and upload.owner:
                self._config.quota.check(await self._repo.usage(upload.owner), size=size)
        except (TooLarge, QuotaExceeded, BadRequest) as exc:
            await self.refuse(upload, exc)
            raise

    def _size_allowed(self, upload: Upload, size: int) -> None:
        if upload.length is not None and size != upload.length:
            raise BadRequest(f"the file is {size} bytes, not the {upload.length} declared")
        limit = smallest(self._config.max_size, upload.size_cap)
        if limit is not None and size > limit:
            raise TooLarge(f"the file is {size} bytes, more than the maximum size {limit}")

    async def refuse(self, upload: Upload, exc: ServiceError) -> None:
        """The upload broke a rule (its size, its type, the quota): failed with the reason, its
        bytes deleted."""
        with contextlib.suppress(Conflict):  # ended meanwhile: its bytes go with it anyway
            # it holds nothing: its ticket (if it was made with one) gets the use back, so the
            # end user can try again with a file that fits
            await self._repo.fail(
                upload.id,
                exc.message,
                self._clock(),
                only_from=(UploadState.RECEIVING,),
                give_back=True,
            )
        await self._store.delete(upload.storage)  # row first: nothing reads them now
        self._events.failed()
        logger.warning("direct upload refused: %s", exc.message, extra={"upload_id": upload.id})

    async def finish(self, upload: Upload, size: int, types: tuple[str, ...] = ()) -> Upload:
        """The object is complete in the store (``size`` bytes): check it (its first bytes by
        the service's allowed types and ``types``, the caller's), then move the row to
        ``verifying`` (the caller holds the upload's lock)."""
        try:
            self._size_allowed(upload, size)
            await self._check_head(upload, size, types)
            now = self._clock()
            if upload.length is None:
                upload = await self._repo.declare_length(upload.id, size, now, self._config.quota)
            upload = await self._repo.advance(
                upload.id, expected=0, offset=size, now=now, expires_at=upload.expires_at
            )
        except ServiceError as exc:
            if exc.status >= 500:
                raise  # the store or the database is down: the client's retry finishes it
            await self.refuse(upload, exc)
            raise
        upload = await self._repo.complete(upload.id, self._clock())
        logger.info("direct upload complete (%d bytes)", size, extra={"upload_id": upload.id})
        return upload

    async def _check_head(self, upload: Upload, size: int, types: tuple[str, ...]) -> None:
        """With allowed types configured (by the service or the caller), the object's first
        bytes must show one, as a tus upload's first bytes must."""
        rules = self._rules.narrowed(types)
        if not rules.restricted or size == 0:
            return
        head = b""
        async for piece in self._store.read(upload.storage, 0, min(rules.head_size, size)):
            head += piece
        await rules.check_head(head, short=False)

    async def settle_posts(self) -> int:
        """Finish every receiving form-POST upload whose object has arrived; how many did."""
        store = self._direct
        settled = 0
        waiting = await self._repo.list_page(
            UploadQuery(states=(UploadState.RECEIVING,), direct=True, limit=SETTLE_BATCH)
        )
        for upload in waiting:
            if store.multipart_id(upload.storage) is not None:
                continue  # a multipart upload ends when its client completes it
            if await store.finished_size(upload.storage) is None:
                continue
            try:
                async with self._locker.lock(upload.id, wait=0, preempt=False) as lease:
                    current = await self._loader.claimed(upload.id, lease)
                    if current is None or current.state is not UploadState.RECEIVING:
                        continue
                    size = await store.finished_size(current.storage)
                    if size is None:
                        continue
                    await self.finish(current, size, ())
            except Locked:
                continue  # another replica is settling it
            except ServiceError as exc:
                if exc.status >= 500:
                    logger.error("settling a direct upload failed: %s", exc.message)
                continue
            settled += 1
            await self._lifecycle.verify_soon(upload.id)
        return settled
