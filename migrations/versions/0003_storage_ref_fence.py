"""storage reference of each upload, the fencing token of its lock's last holder, and metadata as
structured data (a JSON object of base64 values) instead of the tus header's text

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

uploads = sa.table(
    "uploads",
    sa.column("id", sa.String(32)),
    sa.column("metadata_header", sa.Text()),
    sa.column("metadata_json", sa.JSON()),
)


def _from_header(header: str) -> dict[str, str | None]:
    """The stored header was written by the service itself: ``key b64,key``, canonical."""
    result: dict[str, str | None] = {}
    for pair in filter(None, (part.strip() for part in header.split(","))):
        key, _, value = pair.partition(" ")
        result[key] = value or None
    return result


def _to_header(metadata: dict[str, str | None]) -> str:
    return ",".join(key if value is None else f"{key} {value}" for key, value in metadata.items())


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("storage_ref", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("fence", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("metadata_json", sa.JSON(), nullable=True))
    connection = op.get_bind()
    for row in connection.execute(sa.select(uploads.c.id, uploads.c.metadata_header)):
        connection.execute(
            uploads.update()
            .where(uploads.c.id == row.id)
            .values(metadata_json=_from_header(row.metadata_header or ""))
        )
    connection.execute(
        uploads.update().where(uploads.c.metadata_json.is_(None)).values(metadata_json={})
    )
    with op.batch_alter_table("uploads") as batch:
        batch.alter_column("metadata_json", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("metadata_header")


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("metadata_header", sa.Text(), nullable=False, server_default=""))
    connection = op.get_bind()
    for row in connection.execute(sa.select(uploads.c.id, uploads.c.metadata_json)):
        stored = row.metadata_json
        metadata = json.loads(stored) if isinstance(stored, str) else (stored or {})
        connection.execute(
            uploads.update()
            .where(uploads.c.id == row.id)
            .values(metadata_header=_to_header(metadata))
        )
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("metadata_json")
        batch.drop_column("fence")
        batch.drop_column("storage_ref")
