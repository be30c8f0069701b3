"""the parts of final uploads in their own table: a partial upload may be a part of several finals

``upload_parts`` holds one row per part of a final upload (its position and the partial upload),
filled from the finals' ``parts`` text; ``uploads.final_id``, which could name one final only,
goes. The downgrade puts ``final_id`` back as the most recent live final that names the part
(the old schema can name one; the others are then forgotten there).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

BATCH = 1000


def upgrade() -> None:
    # No foreign keys: a later migration that rebuilds ``uploads`` (SQLite's batch mode drops
    # and recreates the table) would cascade deletes into this one.
    parts = op.create_table(
        "upload_parts",
        sa.Column("final_id", sa.String(32), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("part_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_upload_parts_part", "upload_parts", ["part_id", "final_id"])
    finals = op.get_bind().execute(
        sa.text("SELECT id, parts FROM uploads WHERE concat = 'final' AND parts IS NOT NULL")
    )
    rows: list[dict[str, object]] = []
    for final_id, listed in finals.all():
        for position, part_id in enumerate(listed.split()):
            rows.append({"final_id": final_id, "position": position, "part_id": part_id})
            if len(rows) >= BATCH:
                op.bulk_insert(parts, rows)
                rows = []
    if rows:
        op.bulk_insert(parts, rows)
    op.drop_index("ix_uploads_final_id", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("final_id")


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("final_id", sa.String(32), nullable=True))
    op.create_index("ix_uploads_final_id", "uploads", ["final_id"])
    op.execute(
        "UPDATE uploads SET final_id = ("
        " SELECT p.final_id FROM upload_parts p JOIN uploads f ON f.id = p.final_id"
        " WHERE p.part_id = uploads.id AND f.state IN ('receiving', 'verifying', 'ready')"
        " ORDER BY f.created_at DESC, f.id DESC LIMIT 1"
        ") WHERE concat = 'partial'"
    )
    op.drop_index("ix_upload_parts_part", table_name="upload_parts")
    op.drop_table("upload_parts")
