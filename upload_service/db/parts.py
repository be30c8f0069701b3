"""Parts of final uploads (concatenation) in ``upload_parts``: a partial upload may be a part of
several finals. Here are the queries that join finals to their parts: linking a new final's
parts (``link_parts``), the finals a part belongs to (``loaded``, ``finals_receiving``) and the
ended parts no final still waits for (``awaited``).

Race story: ``add_final`` reads each part ``FOR SHARE`` (PostgreSQL; SQLite has one writer at a
time, and the final's insert takes the write lock first), while ``terminate`` and ``expire``
update the part's row before they read its finals. Whichever commits first, the other sees it: a
final inserted first makes ``terminate`` refuse (its update waited for the final's commit, and
the read after it, a new snapshot, finds the final), and ``expire`` returns the part with that
final among its ``finals`` to be failed; a part that ended first is a ``Conflict`` for
``add_final``, whose locking read re-checks the updated row. So no final still receiving ever
names a terminated part, and every final that names an expired part is found.

Crash story: a final's row and its parts' rows are inserted in one transaction, so a kill -9
leaves either the final with every part linked or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, Select, insert, select
from sqlalchemy.orm import aliased

from upload_service.db.models import UploadPartRow, UploadRow
from upload_service.db.rows import in_states, to_upload
from upload_service.db.transitions import part_ended
from upload_service.uploads import LIVE_STATES, Upload, UploadState

# A final upload, joined to the parts it names (made once: building an alias costs far more than
# the query that uses it).
_FINAL = aliased(UploadRow, name="final")


def link_parts(connection: Connection, final: Upload) -> None:
    """Insert the rows naming ``final``'s parts, in order, after the final's own row was flushed
    (SQLite: the insert took the write lock before the parts are read); ``Conflict`` when a
    part ended meanwhile (see the race story)."""
    for position, part in enumerate(final.parts):
        # FOR SHARE (PostgreSQL): the part cannot end until this commits, and a part that
        # ended meanwhile is re-read as it is now; finals naming one part do not wait
        live = connection.scalar(
            select(UploadRow.id)
            .where(UploadRow.id == part, UploadRow.concat == "partial", in_states(LIVE_STATES))
            .with_for_update(read=True)
        )
        if live is None:
            raise part_ended(part)
        connection.execute(
            insert(UploadPartRow),
            {"final_id": final.id, "position": position, "part_id": part},
        )


def loaded(connection: Connection, rows: Sequence[Row[Any]]) -> list[Upload]:
    """The rows as uploads, each partial upload with its live finals, oldest first (one more
    query, only when a partial upload is among the rows)."""
    part_ids = [row.id for row in rows if row.concat == "partial"]
    finals: dict[str, list[str]] = {}
    if part_ids:
        statement = (
            select(UploadPartRow.part_id, _FINAL.id)
            .join(_FINAL, _FINAL.id == UploadPartRow.final_id)
            .where(
                UploadPartRow.part_id.in_(part_ids),
                _FINAL.state.in_([state.value for state in LIVE_STATES]),
            )
            .order_by(_FINAL.created_at, _FINAL.id)
        )
        for part_id, final_id in connection.execute(statement):
            finals.setdefault(part_id, []).append(final_id)
    return [to_upload(row, tuple(finals.get(row.id, ()))) for row in rows]


def finals_receiving(part_id: str) -> Select[str]:
    """The finals still receiving (waiting for or assembling from their parts) that name
    ``part_id``, oldest first."""
    return (
        select(_FINAL.id)
        .join(UploadPartRow, UploadPartRow.final_id == _FINAL.id)
        .where(UploadPartRow.part_id == part_id, _FINAL.state == UploadState.RECEIVING.value)
        .order_by(_FINAL.created_at, _FINAL.id)
    )


def awaited() -> ColumnElement[bool]:
    """The row is a part of a final still receiving (which will read its bytes)."""
    return (
        select(UploadPartRow.part_id)
        .join(_FINAL, _FINAL.id == UploadPartRow.final_id)
        .where(UploadPartRow.part_id == UploadRow.id, _FINAL.state == UploadState.RECEIVING.value)
        .exists()
    )
