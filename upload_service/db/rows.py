"""Upload rows as ``Upload`` values and back, and the conditions on a row's state that every
query module shares. The stored format lives here: metadata as JSON of base64 values (raw bytes
survive, keys as they are), video facts as JSON, every moment in UTC.

Crash story: none of its own. These are pure conversions; what reaches the disk is written by
the transaction of the caller that built the row, whole or not at all.
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Row, Table, insert

from upload_service.db.models import UploadRow, aware
from upload_service.uploads import Metadata, Upload, UploadState, VideoInfo


def metadata_of(stored: dict[str, str | None]) -> Metadata:
    # JSON holds text: raw values (any bytes) are kept base64-encoded, keys as they are
    return {
        key: None if value is None else base64.b64decode(value) for key, value in stored.items()
    }


def metadata_json(metadata: Metadata) -> dict[str, str | None]:
    return {
        key: None if value is None else base64.b64encode(value).decode("ascii")
        for key, value in metadata.items()
    }


_VIDEO_FIELDS = frozenset(field.name for field in dataclasses.fields(VideoInfo))


def video_of(stored: dict[str, object] | None) -> VideoInfo | None:
    if not stored or not isinstance(stored.get("container"), str):
        return None
    known = {key: value for key, value in stored.items() if key in _VIDEO_FIELDS}
    return VideoInfo(**known)  # type: ignore[arg-type]


def video_json(video: VideoInfo | None) -> dict[str, object] | None:
    return None if video is None else dataclasses.asdict(video)


def utc(moment: datetime) -> datetime:
    # SQLite keeps the wall-clock text without its offset: every bound moment is UTC
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def to_upload(row: UploadRow | Row[Any], finals: tuple[str, ...] = ()) -> Upload:
    """The upload of a row: a mapped object, or a row of the table's columns (by name)."""
    created = aware(row.created_at)
    updated = aware(row.updated_at)
    assert created is not None
    assert updated is not None
    return Upload(
        id=row.id,
        length=row.length,
        offset=row.upload_offset,
        received=max(row.received, row.upload_offset),
        state=UploadState(row.state),
        metadata=metadata_of(row.metadata_json),
        created_at=created,
        updated_at=updated,
        expires_at=aware(row.expires_at),
        completed_at=aware(row.completed_at),
        failure=row.failure,
        concat=row.concat,
        parts=tuple(row.parts.split()) if row.parts else (),
        finals=finals,
        sha256=row.sha256,
        state_changed_at=aware(row.state_changed_at),
        storage_ref=row.storage_ref,
        fence=row.fence,
        owner=row.owner,
        size_cap=row.size_cap,
        video=video_of(row.video),
        ticket=row.ticket_id,
        direct=bool(row.direct),
    )


# the uploads table, and the insert of one row of it (its values given at execution)
UPLOADS: Table = cast(Table, UploadRow.__table__)
INSERT_UPLOAD = insert(UPLOADS)


def to_row(upload: Upload) -> dict[str, object]:
    """The values of ``upload``'s row, by column (for ``INSERT_UPLOAD``)."""
    return dict(
        id=upload.id,
        length=upload.length,
        upload_offset=upload.offset,
        received=upload.received,
        state=upload.state.value,
        metadata_json=metadata_json(upload.metadata),
        created_at=upload.created_at,
        updated_at=upload.updated_at,
        expires_at=upload.expires_at,
        completed_at=upload.completed_at,
        failure=upload.failure,
        concat=upload.concat,
        parts=" ".join(upload.parts) or None,
        sha256=upload.sha256,
        state_changed_at=upload.state_changed_at or upload.created_at,
        storage_ref=upload.storage_ref,
        fence=upload.fence,
        owner=upload.owner,
        size_cap=upload.size_cap,
        video=video_json(upload.video),
        ticket_id=upload.ticket,
        direct=upload.direct,
    )


def in_states(states: tuple[UploadState, ...]) -> ColumnElement[bool]:
    if len(states) == 1:
        return UPLOADS.c.state == states[0].value
    return UPLOADS.c.state.in_([state.value for state in states])
