"""concatenation, whole-file digest, state timestamps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("concat", sa.String(8), nullable=True))
        batch.add_column(sa.Column("parts", sa.Text(), nullable=True))
        batch.add_column(sa.Column("final_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_uploads_final_id", "uploads", ["final_id"])


def downgrade() -> None:
    op.drop_index("ix_uploads_final_id", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("state_changed_at")
        batch.drop_column("sha256")
        batch.drop_column("final_id")
        batch.drop_column("parts")
        batch.drop_column("concat")
