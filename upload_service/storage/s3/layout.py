"""How an upload lies in S3: S3's size limits, the key's ref (a tus upload's
``<part size>:<UploadId>``, a direct upload's ``direct:<UploadId>`` or ``post:``), the part size an
upload gets, the name of a tail object and what an unfinished upload has stored (``Layout``). Pure
values: every other module of the store imports it, and it imports only ``client`` (for ``Part``).

Crash story (what survives a kill -9 is what this reads back): every ``sync`` leaves the tail of
its slot, so the durable size is ``(n - 1) * part_size`` plus tail ``n``, for the highest slot
``n`` whose parts ``1..n-1`` exist (``Layout.size``); parts past that slot were never synced and do
not count, whatever a crash left of them. A direct upload has no tails and no ``Layout``.
"""

from __future__ import annotations

from dataclasses import dataclass

from upload_service.storage.s3.client import Part

KiB = 1024
MiB = 1024 * KiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MiB  # S3's largest object: 5 TiB
MAX_PARTS = 10_000  # S3's part numbers are 1..10,000


def tail_key(obj: str, number: int) -> str:
    """The "incomplete part" object of slot ``number`` of the upload of object ``obj``."""
    return f"{obj}.part.{number}"


DIRECT = "direct:"  # a browser's multipart upload: ``direct:<UploadId>``
POST = "post:"  # a browser's form POST: no multipart upload at all


def is_direct(ref: str) -> bool:
    """Whether the ref is a direct upload's (a browser's multipart upload or form POST): its bytes
    go straight to the bucket, it has no tails and takes no appends."""
    return ref.startswith((DIRECT, POST))


def parse_ref(ref: str) -> tuple[str, int | None]:
    """A key's ref: the multipart UploadId and the upload's part size (None: not recorded). A
    direct upload records no part size (its parts are the browser's, of any size); a POST has
    no UploadId (``""``)."""
    if ref.startswith(DIRECT):
        return ref[len(DIRECT) :], None
    if ref.startswith(POST):
        return "", None
    size, separator, upload_id = ref.partition(":")
    if separator and size.isdigit():
        return upload_id, int(size)
    return ref, None


def choose_part_size(max_size: int, requested: int = MIN_PART_SIZE) -> int:
    """The part size for uploads of up to ``max_size`` bytes: ``requested``, or larger (whole
    MiB) when 10,000 parts of it would not hold ``max_size``. ``ValueError`` past S3's largest
    object."""
    if not MIN_PART_SIZE <= requested <= MAX_PART_SIZE:
        raise ValueError(f"the part size must be between 5 MiB and 5 GiB, not {requested}")
    if max_size > MAX_OBJECT_SIZE:
        raise ValueError(
            f"an upload of {max_size} bytes is larger than S3's largest object (5 TiB)"
        )
    needed = -(-max_size // MAX_PARTS)
    if needed <= requested:
        return requested
    return -(-needed // MiB) * MiB  # at most 525 MiB: 5 TiB fits in 10,000 parts


@dataclass(frozen=True, slots=True)
class Layout:
    """What an unfinished upload has stored: its parts and its tail objects (slot -> size)."""

    upload_id: str
    part_size: int
    parts: dict[int, Part]
    tails: dict[int, int]

    def has_parts(self, count: int) -> bool:
        """Whether parts ``1..count`` all exist."""
        return all(number in self.parts for number in range(1, count + 1))

    def slot(self) -> int:
        """The slot of the latest ``sync``: the highest tail whose earlier parts all exist (every
        sync leaves its slot's tail, empty or not). Parts past it were never synced. Without
        any tail (lost): the slot after the contiguous parts."""
        for number in sorted(self.tails, reverse=True):
            if self.has_parts(number - 1):
                return number
        count = 0
        while count + 1 in self.parts:
            count += 1
        return count + 1

    def slot_start(self) -> int:
        return (self.slot() - 1) * self.part_size

    def size(self) -> int:
        return self.slot_start() + self.tails.get(self.slot(), 0)
