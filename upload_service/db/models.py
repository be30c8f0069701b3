from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class UploadRow(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    length: Mapped[int | None] = mapped_column(BigInteger)
    upload_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))
    # {key: base64 of the raw value, or null}: structured data, not the tus header's text
    metadata_json: Mapped[dict[str, str | None]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failure: Mapped[str | None] = mapped_column(Text)
    # concatenation: "partial", "final" or None; a final lists its parts (space-separated ids, in
    # order; also in upload_parts, where a part finds the finals that name it)
    concat: Mapped[str | None] = mapped_column(String(8))
    parts: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(
        String(64)
    )  # hex digest of the whole file, once ready
    state_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # what Store.create returned beside the id (an object store's multipart upload id)
    storage_ref: Mapped[str] = mapped_column(Text, default="")
    # fencing token of the last lock holder that claimed the upload; offset commits must carry it
    fence: Mapped[int] = mapped_column(BigInteger, default=0)
    # who created the upload (auth.owners: key:NAME or jwt:ISS:SUB); NULL on an open service
    owner: Mapped[str | None] = mapped_column(String(1024))
    # the creator's own cap on the upload's size (a token's upload_max_size), checked whenever
    # its length becomes known (a deferred length, a final's assembly); NULL: none of its own
    size_cap: Mapped[int | None] = mapped_column(BigInteger)
    # what ffprobe found once the upload was verified (uploads.VideoInfo's fields); NULL: none
    video: Mapped[dict[str, object] | None] = mapped_column(JSON)
    # the upload ticket it was made with (tickets.id); NULL: made with the issuer's credential
    ticket_id: Mapped[str | None] = mapped_column(String(32))
    # its bytes go from the client straight to the store (direct uploads)
    direct: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_uploads_state_expires", "state", "expires_at"),
        Index("ix_uploads_ticket", "ticket_id"),
        Index("ix_uploads_owner", "owner", "state"),  # reachability and per-owner quotas
        # GET /api/uploads: one owner's uploads (or everyone's) newest first, by the page cursor
        Index("ix_uploads_owner_created", "owner", "created_at", "id"),
        Index("ix_uploads_created", "created_at", "id"),
    )


class UploadPartRow(Base):
    """One part of a final upload: the partial upload at ``position`` (from 0). A partial upload
    may be a part of any number of finals; the index finds the finals that name a part. No
    foreign keys: ``forget`` deletes a row's parts with it, and a migration that rebuilds
    ``uploads`` (SQLite's batch mode) must not cascade into this table."""

    __tablename__ = "upload_parts"

    final_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    part_id: Mapped[str] = mapped_column(String(32))

    __table_args__ = (Index("ix_upload_parts_part", "part_id", "final_id"),)


class TicketRow(Base):
    """An upload ticket (``upload_service.tickets``): ``used`` moves only by compare-and-set, in
    the transaction that inserts the upload it was used for."""

    __tablename__ = "tickets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    uploads: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    max_size: Mapped[int | None] = mapped_column(BigInteger)
    allowed_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_json: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_tickets_expires", "expires_at"),)


class OutboxRow(Base):
    """An event about an upload, written in the transaction of the state change it reports
    (``upload_service.outbox``), until it is delivered (or given up on) and pruned."""

    __tablename__ = "outbox"

    # the order events were written in (one upload's events may share a timestamp)
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(32), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    upload_id: Mapped[str] = mapped_column(String(32))
    # the upload as it was when the event was written (no foreign key: the upload's row may be
    # forgotten before its last events are pruned)
    payload: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # a drainer's lease on the event: nobody else delivers it until then; the token tells whose
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_outbox_status_next", "status", "next_attempt_at"),
        Index("ix_outbox_upload_id", "upload_id"),
    )


def aware(moment: datetime | None) -> datetime | None:
    """A datetime read from a row, in UTC: SQLite hands back naive datetimes; we store UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
