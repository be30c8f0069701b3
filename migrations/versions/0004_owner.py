"""the owner of each upload (who created it, as authentication established), indexed with the
state for reachability checks and per-owner quotas; NULL for uploads of an open service

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("owner", sa.String(255), nullable=True))
    op.create_index("ix_uploads_owner", "uploads", ["owner", "state"])


def downgrade() -> None:
    op.drop_index("ix_uploads_owner", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("owner")
