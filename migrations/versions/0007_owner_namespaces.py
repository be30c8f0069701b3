"""owners namespaced by the kind of credential (``key:NAME``, ``jwt:ISS:SUB``), and the size cap
an upload's creator carried (``size_cap``), checked whenever its length becomes known

Existing owners did not say which kind of credential made them. They are mapped by the settings
in force when the migration runs: an owner that is the name of a configured API key
(``UPLOAD_AUTH_API_KEYS``) becomes ``key:NAME``; every other one was a JWT's ``sub`` and becomes
``jwt:ISS:SUB`` with ``UPLOAD_AUTH_JWT_ISSUER`` as the issuer (empty when none is set). The events
still in the outbox are mapped alike, so hooks see one owner string. Downgrade strips the prefixes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_uploads = sa.table("uploads", sa.column("owner", sa.String))
_outbox = sa.table("outbox", sa.column("seq", sa.Integer), sa.column("payload", sa.JSON))


def _settings() -> tuple[frozenset[str], str]:
    """The API keys' owner names and the JWT issuer configured now."""
    from upload_service.settings import load_settings

    settings = load_settings()
    return frozenset(name for name, _ in settings.auth.api_keys), settings.auth.jwt_issuer or ""


def _namespaced(owner: str, keys: frozenset[str], issuer: str) -> str:
    if owner in keys:
        return "key:" + owner
    escaped = issuer.replace("%", "%25").replace(":", "%3A")
    return f"jwt:{escaped}:{owner}"


def _bare(owner: str) -> str:
    if owner.startswith("key:"):
        return owner[4:]
    if owner.startswith("jwt:"):
        return owner[4:].partition(":")[2]
    return owner


def _map(convert: dict[str, str]) -> None:
    bind = op.get_bind()
    for old, new in convert.items():
        bind.execute(_uploads.update().where(_uploads.c.owner == old).values(owner=new))
    for seq, payload in bind.execute(sa.select(_outbox.c.seq, _outbox.c.payload)).all():
        owner = payload.get("owner") if isinstance(payload, dict) else None
        if isinstance(owner, str) and owner in convert:
            changed = dict(payload, owner=convert[owner])
            bind.execute(_outbox.update().where(_outbox.c.seq == seq).values(payload=changed))


def _owners() -> list[str]:
    query = sa.select(_uploads.c.owner).where(_uploads.c.owner.is_not(None)).distinct()
    return [owner for (owner,) in op.get_bind().execute(query)]


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.alter_column("owner", type_=sa.String(1024), existing_type=sa.String(255))
        batch.add_column(sa.Column("size_cap", sa.BigInteger(), nullable=True))
    keys, issuer = _settings()
    _map({owner: _namespaced(owner, keys, issuer) for owner in _owners()})


def downgrade() -> None:
    _map({owner: _bare(owner)[:255] for owner in _owners()})
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("size_cap")
        batch.alter_column("owner", type_=sa.String(255), existing_type=sa.String(1024))
