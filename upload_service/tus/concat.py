"""Rules of the concatenation extension for a final upload's parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from upload_service.errors import BadRequest, UnsupportedMediaType
from upload_service.storage.base import Store
from upload_service.uploads import LIVE_STATES, Upload


def check_parts(
    part_ids: tuple[str, ...], parts: Mapping[str, Upload], now: datetime
) -> int | None:
    """Validate the parts a final upload names (in order); return the final's length, or None
    while a part's length is still deferred. Each refusal is a 400 naming the part. A part of
    other finals may be named again (the specification lets a partial upload form several
    finals): each final is assembled as its own copy."""
    seen: set[str] = set()
    for part_id in part_ids:
        if part_id in seen:
            raise BadRequest(f"partial upload {part_id} is listed twice")
        seen.add(part_id)
        part = parts.get(part_id)
        if part is None:
            raise BadRequest(f"partial upload {part_id} does not exist")
        if not part.is_partial:
            raise BadRequest(f"upload {part_id} is not a partial upload")
        if part.state not in LIVE_STATES or part.expired(now):
            state = "expired" if part.expired(now) else part.state.value
            raise BadRequest(f"partial upload {part_id} is {state}")
    lengths = [parts[part_id].length for part_id in part_ids]
    if any(length is None for length in lengths):
        return None
    return sum(length or 0 for length in lengths)


async def first_bytes(store: Store, parts: Sequence[Upload], size: int) -> bytes:
    """The first ``size`` bytes of the concatenation of ``parts`` (fewer if it is shorter), read
    from the parts that hold them, which must be complete (else 415: the type of the file
    cannot be checked yet)."""
    chunks: list[bytes] = []
    wanted = size
    for part in parts:
        if wanted <= 0:
            break
        if part.length is None or not part.is_complete:
            raise UnsupportedMediaType(
                f"partial upload {part.id} holds the file's first bytes and must be complete "
                "before the final upload is created, so that the file's type can be checked"
            )
        take = min(wanted, part.length)
        if take:
            chunks.extend([chunk async for chunk in store.read(part.storage, 0, take)])
        wanted -= take
    return b"".join(chunks)
