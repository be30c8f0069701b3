"""The size limits that bind a request body, in one place: the service's maximum size, the
caller's and the creator's caps (``smallest`` of them), the bytes an upload of known length has
left, and, while the length is unknown, what is left of the owner's byte quota. Creation, PATCH
and a form's whole file each ask here how much room a body has and what refusal lies past it
(413, or 403 for the quota); the body is then read through a ``LimitedBody`` cut at that room.

Crash story: none of its own. These checks only read (the owner's usage); nothing is written,
so a kill -9 here leaves nothing behind. The room they compute is advisory for the quota: the
commit checks the quota again, serialised with the owner's other uploads, so a crash or a race
between this read and the commit cannot take an owner past the quota.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from upload_service.auth.principal import Principal
from upload_service.errors import QuotaExceeded, ServiceError, TooLarge
from upload_service.tus.types import HandlerConfig
from upload_service.uploads import Upload, smallest

if TYPE_CHECKING:
    from upload_service.db.base import UploadRepository


def check_room(room: int | None, content_length: int, refusal: ServiceError | None = None) -> None:
    """A request body of ``content_length`` bytes is refused before it is read when it does not
    fit in ``room`` (``Limits.limit`` or ``Limits.room``): with ``refusal``, else a 413."""
    if room is not None and content_length > room:
        raise refusal or TooLarge(
            f"Content-Length {content_length} exceeds the {room} bytes the upload has left"
        )


class Limits:
    """The limits of ``config`` over the owners' usage in ``repository``."""

    def __init__(self, *, config: HandlerConfig, repository: UploadRepository) -> None:
        self._config = config
        self._repo = repository

    def check_max_size(self, length: int, principal: Principal, cap: int | None = None) -> None:
        """413 past ``UPLOAD_MAX_SIZE``, the caller's own cap or ``cap`` (an upload's creator's),
        whichever is smallest."""
        limit = smallest(self._config.max_size, principal.max_size, cap)
        if limit is not None and length > limit:
            raise TooLarge(f"Upload-Length {length} exceeds the maximum size {limit}")

    def limit(self, offset: int, length: int | None, cap: int | None = None) -> int | None:
        """The bytes an upload at ``offset`` may still take: up to its length, else up to the
        service's maximum size or its creator's own ``cap``, whichever is smaller."""
        if length is not None:
            return length - offset
        limit = smallest(self._config.max_size, cap)
        return None if limit is None else max(limit - offset, 0)

    def check_fits(
        self, offset: int, length: int | None, content_length: int, cap: int | None = None
    ) -> None:
        """What the upload's length and caps leave (the quota, which needs the database, is
        checked where the body is received: ``Receiver.receive``)."""
        check_room(self.limit(offset, length, cap), content_length)

    async def room(self, upload: Upload) -> tuple[int | None, ServiceError | None]:
        """The bytes a request may write into ``upload`` and the refusal past them: its
        ``limit`` (413), or, for an upload of unknown length whose bytes count against its
        owner's byte quota as they arrive, what is left of that quota now if that is less (403;
        the commit checks the quota again, serialised with the owner's other uploads)."""
        limit = self.limit(upload.offset, upload.length, upload.size_cap)
        if upload.length is not None:
            return limit, None
        return await self._within_quota(upload.owner, limit, "the upload's bytes")

    async def whole(self, principal: Principal) -> tuple[int | None, ServiceError | None]:
        """Where a whole file of unknown length in one body (a form's file part) is cut: at the
        maximum size, or where it would pass the owner's byte quota (the length is unknown until
        the body ends, so the quota is what is left of it now)."""
        limit = self.limit(0, None, principal.max_size)
        return await self._within_quota(principal.owner, limit, "the file")

    async def _within_quota(
        self, owner: str | None, limit: int | None, what: str
    ) -> tuple[int | None, ServiceError | None]:
        """``limit``, or what is left of ``owner``'s byte quota now if that is less (with the
        403 past it). Reads the usage only when a byte quota applies."""
        quota = self._config.quota
        if quota is None or quota.bytes is None or owner is None:
            return limit, None
        usage = await self._repo.usage(owner)
        left = max(quota.bytes - usage.bytes, 0)
        if limit is not None and limit <= left:
            return limit, None
        return left, QuotaExceeded(
            f"quota exceeded: {usage.bytes} bytes stored, {what} would pass "
            f"the limit of {quota.bytes}"
        )
