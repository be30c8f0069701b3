"""Rules of the concatenation extension for a final upload's parts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from upload_service.errors import BadRequest
from upload_service.uploads import LIVE_STATES, Upload


def check_parts(
    part_ids: tuple[str, ...], parts: Mapping[str, Upload], now: datetime
) -> int | None:
    """Validate the parts a final upload names (in order); return the final's length, or None
    while a part's length is still deferred. Each refusal is a 400 naming the part."""
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
        if part.final_id is not None:
            raise BadRequest(f"partial upload {part_id} already belongs to another upload")
        if part.state not in LIVE_STATES or part.expired(now):
            state = "expired" if part.expired(now) else part.state.value
            raise BadRequest(f"partial upload {part_id} is {state}")
    lengths = [parts[part_id].length for part_id in part_ids]
    if any(length is None for length in lengths):
        return None
    return sum(length or 0 for length in lengths)
