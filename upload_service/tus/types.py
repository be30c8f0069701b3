"""The plain values the tus handler and its collaborators (``load``, ``receive``, ``reconcile``,
``creation``, the lifecycle) share: what they all work on (``Backends``), the handler's
configuration, its response, and the conflict of a request that lost its lock. A leaf of
``tus/``: it imports none of the collaborators, so each of them imports it and none needs
another's owner module for a type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from upload_service.db.base import Quota
from upload_service.errors import Conflict

if TYPE_CHECKING:
    from upload_service.db.base import UploadRepository
    from upload_service.locking.base import Locker
    from upload_service.storage.base import Store
    from upload_service.uploads import Upload


@dataclass(frozen=True, slots=True)
class Backends:
    """What every part of the handler works on: the bytes, the rows, the locks and the time."""

    store: Store
    repository: UploadRepository
    locker: Locker
    clock: Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    max_size: int | None = None
    expire_after: float = 7 * 24 * 3600
    orphan_grace: float = 600.0  # seconds unnamed stored bytes are kept before the sweep
    checkpoint_bytes: int = 64 * 1024 * 1024
    checkpoint_seconds: float = 2.0
    body_idle_timeout: float = 60.0  # seconds without a byte: the body ends as if cut
    progress_seconds: float = 0.5
    lock_timeout: float = 3.0
    relative_location: bool = False  # Location on creation: a path instead of an absolute URL
    max_metadata_bytes: int = 4096
    max_metadata_keys: int = 32
    allowed_types: tuple[str, ...] = ()  # parsed patterns (content_types); empty: any type
    quota: Quota | None = None  # per-owner caps (authenticated owners only); None: none
    verify_wait: float = 10.0  # seconds a download of a verifying upload waits for the verdict
    direct_url_ttl: int = 900  # seconds a direct upload's presigned part URL or policy is valid

    def expiry(self, now: datetime) -> datetime:
        """When an upload that receives bytes at ``now`` expires if nothing more arrives."""
        return now + timedelta(seconds=self.expire_after)


@dataclass(frozen=True, slots=True)
class TusResponse:
    status: int
    headers: dict[str, str]
    upload_id: str | None = None
    upload: Upload | None = None  # the upload as the request left it, for other renderings


class LeaseLost(Conflict):
    """This request's lock on the upload was lost (the lock service went away, or a newer
    request took the upload over): it stopped writing, and nothing more of it is committed."""

    def __init__(self) -> None:
        super().__init__(
            "this request lost its lock on the upload; fetch the upload's offset and retry"
        )
