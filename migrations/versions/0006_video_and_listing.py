"""video details (what ffprobe found) on uploads, and the indexes GET /api/uploads pages by

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("video", sa.JSON(), nullable=True))
    op.create_index("ix_uploads_owner_created", "uploads", ["owner", "created_at", "id"])
    op.create_index("ix_uploads_created", "uploads", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_uploads_created", table_name="uploads")
    op.drop_index("ix_uploads_owner_created", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("video")
