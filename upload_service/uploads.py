"""The upload record shared by the handler, the repository and the JSON API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from upload_service.storage.base import StorageKey


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What ffprobe found in a verified upload that is a video (``upload_service.video``)."""

    container: str  # ffprobe's format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration: float | None = None  # seconds
    video_codec: str | None = None  # of the first video stream, e.g. "h264"
    audio_codec: str | None = None  # of the first audio stream, e.g. "aac"
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None  # frames a second of the first video stream
    bit_rate: int | None = None  # bits a second, the whole file


# An upload's metadata: keys to raw values (None: a key given without a value). Only ``tus/``
# knows how the tus protocol writes it on the wire (``Upload-Metadata``).
Metadata = dict[str, bytes | None]


class UploadState(StrEnum):
    RECEIVING = "receiving"  # accepting bytes; offset < length (or length still deferred)
    VERIFYING = "verifying"  # every byte is durable; the whole-file digest is being computed
    READY = "ready"  # verified; downloadable
    FAILED = "failed"
    EXPIRED = "expired"
    TERMINATED = "terminated"


# An upload still has (or will have) its bytes; an ended one never will again.
LIVE_STATES = (UploadState.RECEIVING, UploadState.VERIFYING, UploadState.READY)
ENDED_STATES = (UploadState.FAILED, UploadState.EXPIRED, UploadState.TERMINATED)


def smallest(*sizes: int | None) -> int | None:
    """The size limit that binds among ``sizes`` (the service's maximum, a token's cap, an
    upload's creator's cap); None when none of them limits."""
    known = [size for size in sizes if size is not None]
    return min(known) if known else None


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    length: int | None  # None while the length is deferred
    offset: int  # durable, committed bytes: the only offset ever reported
    received: int  # bytes received so far, including ones not yet durable (progress)
    state: UploadState
    metadata: Metadata
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    completed_at: datetime | None = None
    failure: str | None = None
    concat: str | None = None  # "partial" or "final" (concatenation extension)
    parts: tuple[str, ...] = ()  # a final upload's partial uploads, in order
    # a partial upload's live final uploads (receiving, verifying or ready) that name it, oldest
    # first: a partial may be a part of any number of finals
    finals: tuple[str, ...] = ()
    sha256: str | None = None  # hex digest of the whole file, once verified
    state_changed_at: datetime | None = None
    storage_ref: str = ""  # the store's reference beside the id (StorageKey.ref)
    owner: str | None = None  # who created it (auth.owners: key:NAME, jwt:ISS:SUB); None: open
    size_cap: int | None = None  # its creator's own cap on its size (a token's upload_max_size)
    video: VideoInfo | None = None  # set as it becomes ready; None: not a video, or not probed
    ticket: str | None = None  # the id of the upload ticket it was made with (``tickets``)
    # its bytes go from the client straight to the store (an S3 multipart upload on presigned
    # URLs, ``direct``): it takes no PATCH, and its offset moves only when it completes
    direct: bool = False
    # fencing token of the last lock holder that claimed it (0: none); lock bookkeeping, not
    # part of the upload's value: two records of one upload that differ only here are equal
    fence: int = field(default=0, compare=False)

    @property
    def storage(self) -> StorageKey:
        return StorageKey(self.id, self.storage_ref)

    @property
    def is_final(self) -> bool:
        return self.concat == "final"

    @property
    def is_partial(self) -> bool:
        return self.concat == "partial"

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset == self.length

    def expired(self, now: datetime) -> bool:
        return (
            self.state is UploadState.RECEIVING
            and self.expires_at is not None
            and self.expires_at <= now
        )
