"""The repository's transitions as a table both implementations read (``repository`` in SQL,
``memory``): the states each applies from, the state it moves to, the event hooks hear of it, and
what its ``Conflict`` says when the row is no longer as expected. What else a transition expects
(an offset, an unknown length, an expiry passed) is a condition each implementation writes in its
own terms, beside its use of this table.

Crash story: none of its own. These are values; each implementation applies a transition in one
transaction (SQL) or one step (memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from upload_service.errors import Conflict
from upload_service.outbox import EventType
from upload_service.uploads import LIVE_STATES, UploadState


@dataclass(frozen=True, slots=True)
class Transition:
    conflict: str  # what ``Conflict`` says when the row is not as the transition expects
    # the states it applies from (None: any state, or the ones its caller names)
    sources: tuple[UploadState, ...] | None = None
    target: UploadState | None = None  # moves the upload to this state (None: it stays)
    event: EventType | None = None  # what hooks hear of it (written when events are on)

    def changes(self, now: datetime | None) -> dict[str, object]:
        """What the transition sets beside its own fields: with ``now``, when the row changed,
        and when it moves the upload, its state and when that changed."""
        changes: dict[str, object] = {} if now is None else {"updated_at": now}
        if self.target is not None:
            changes.update(state=self.target, state_changed_at=now)
        return changes


_RECEIVING = (UploadState.RECEIVING,)
_CHANGED = "upload changed concurrently; fetch its offset and retry"

CLAIM = Transition("upload was taken over by a newer request")
ADVANCE = Transition(_CHANGED, _RECEIVING)
FORCE_OFFSET = Transition(_CHANGED, _RECEIVING)
DECLARE_LENGTH = Transition("the upload's length was declared meanwhile", _RECEIVING)
COMPLETE = Transition(
    "upload is not complete, or was completed meanwhile", _RECEIVING, UploadState.VERIFYING
)
ASSEMBLED = Transition(
    "final upload was assembled or ended meanwhile", _RECEIVING, UploadState.VERIFYING
)
MARK_READY = Transition(
    "upload is no longer being verified",
    (UploadState.VERIFYING,),
    UploadState.READY,
    EventType.POST_FINISH,
)
FAIL = Transition("upload changed state meanwhile", None, UploadState.FAILED)  # the caller's states
TERMINATE = Transition(
    "upload has ended already", LIVE_STATES, UploadState.TERMINATED, EventType.POST_TERMINATE
)
EXPIRE = Transition(
    "upload was extended or ended meanwhile",
    _RECEIVING,
    UploadState.EXPIRED,
    EventType.POST_EXPIRE,
)


def part_ended(part_id: str) -> Conflict:
    """``add_final``: a part is no longer a live partial upload."""
    return Conflict(f"partial upload {part_id} ended meanwhile")


def part_awaited(final_id: str) -> Conflict:
    """``terminate`` of a part that a final still receiving names (the oldest such final)."""
    return Conflict(f"partial upload belongs to final upload {final_id}, not assembled yet")
