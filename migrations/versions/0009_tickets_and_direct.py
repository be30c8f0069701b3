"""upload tickets, and the columns of uploads made with one or sent straight to the store

``tickets`` holds each issued ticket (its secret's hash, the issuer, its caps, its uses).
``uploads.ticket_id`` names the ticket an upload was made with (NULL for every existing upload);
``uploads.direct`` marks an upload whose bytes go from the client straight to the store (false
for every existing upload).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploads", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("max_size", sa.BigInteger(), nullable=True),
        sa.Column("allowed_types", sa.JSON(), nullable=False),
        sa.Column("metadata_json", sa.JSON(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_tickets_expires", "tickets", ["expires_at"])
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("ticket_id", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("direct", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index("ix_uploads_ticket", "uploads", ["ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_uploads_ticket", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("direct")
        batch.drop_column("ticket_id")
    op.drop_index("ix_tickets_expires", table_name="tickets")
    op.drop_table("tickets")
