"""Upload tickets in ``tickets``: the ``TicketRepository`` queries, and the use of a ticket that an
upload's insert makes in its own transaction (``use_ticket``). A base of
``SqlUploadRepository``.

Race story: a use is one conditional ``UPDATE ... RETURNING`` from a count below the ticket's
limit, while it is neither revoked nor expired; two transactions that race for the last use
serialise on the ticket's row (PostgreSQL's row lock, SQLite's single writer), and the second
finds the condition false and changes nothing. A revocation is the same kind of update, so a
creation either used the ticket before it was revoked or is refused.

Crash story: the use and the upload's insert are one transaction: a kill -9 leaves both or
neither, so a ticket never loses a use to an upload that does not exist. A use given back (an
upload refused before it held anything: ``give_back``) is given in the transaction that ends
that upload, so only the one caller whose transition ended it gives it, once.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, insert, select, update

from upload_service.db.models import TicketRow, aware
from upload_service.db.outbox import SqlOutbox
from upload_service.db.rows import UPLOADS, utc
from upload_service.errors import Unauthorized
from upload_service.tickets import Ticket, used_up

TICKETS: Table = cast(Table, TicketRow.__table__)


def to_ticket(row: Row[Any]) -> Ticket:
    created = aware(row.created_at)
    expires = aware(row.expires_at)
    assert created is not None
    assert expires is not None
    return Ticket(
        id=row.id,
        secret_hash=row.secret_hash,
        owner=row.owner,
        created_at=created,
        expires_at=expires,
        uploads=row.uploads,
        used=row.used,
        max_size=row.max_size,
        allowed_types=tuple(row.allowed_types or ()),
        metadata=dict(row.metadata_json or {}),
        revoked_at=aware(row.revoked_at),
    )


def ticket_row(ticket: Ticket) -> dict[str, object]:
    return dict(
        id=ticket.id,
        secret_hash=ticket.secret_hash,
        owner=ticket.owner,
        created_at=ticket.created_at,
        expires_at=ticket.expires_at,
        uploads=ticket.uploads,
        used=ticket.used,
        max_size=ticket.max_size,
        allowed_types=list(ticket.allowed_types),
        metadata_json=dict(ticket.metadata),
        revoked_at=ticket.revoked_at,
    )


def use_ticket(connection: Connection, ticket_id: str, now: datetime) -> None:
    """Use one of the ticket's uploads (compare-and-set, in the caller's transaction):
    ``TicketUsedUp`` (403) when none is left, ``Unauthorized`` (401) when it was revoked, has
    expired or does not exist; nothing changes then."""
    used = connection.execute(
        update(TICKETS)
        .where(
            TICKETS.c.id == ticket_id,
            TICKETS.c.used < TICKETS.c.uploads,
            TICKETS.c.revoked_at.is_(None),
            TICKETS.c.expires_at > utc(now),
        )
        .values(used=TICKETS.c.used + 1)
        .returning(TICKETS.c.id)
    ).first()
    if used is not None:
        return
    ticket = _get_ticket(ticket_id, connection)
    if ticket is None:
        raise Unauthorized("invalid upload ticket")
    refusal = ticket.refusal(now)
    raise refusal if refusal is not None else used_up(ticket_id)


def give_back(connection: Connection, ticket_id: str) -> None:
    """Give one use back to the ticket (in the caller's transaction, that of the transition that
    ended an upload refused before it held anything); never below none used."""
    connection.execute(
        update(TICKETS)
        .where(TICKETS.c.id == ticket_id, TICKETS.c.used > 0)
        .values(used=TICKETS.c.used - 1)
    )


def _get_ticket(ticket_id: str, connection: Connection) -> Ticket | None:
    row = connection.execute(select(TICKETS).where(TICKETS.c.id == ticket_id)).first()
    return None if row is None else to_ticket(row)


def _add_ticket(ticket: Ticket, connection: Connection) -> None:
    connection.execute(insert(TICKETS), ticket_row(ticket))


def _revoke(ticket_id: str, now: datetime, connection: Connection) -> Ticket | None:
    connection.execute(
        update(TICKETS)
        .where(TICKETS.c.id == ticket_id, TICKETS.c.revoked_at.is_(None))
        .values(revoked_at=utc(now))
    )
    return _get_ticket(ticket_id, connection)


def _uploads_of(ticket_id: str, connection: Connection) -> tuple[str, ...]:
    rows = connection.execute(
        select(UPLOADS.c.id)
        .where(UPLOADS.c.ticket_id == ticket_id)
        .order_by(UPLOADS.c.created_at, UPLOADS.c.id)
    )
    return tuple(row.id for row in rows)


class SqlTickets(SqlOutbox):
    """``TicketRepository`` over ``Transactions``."""

    async def add_ticket(self, ticket: Ticket) -> None:
        await self._sessions.run(partial(_add_ticket, ticket), begin=True)

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        return await self._sessions.run(partial(_get_ticket, ticket_id))

    async def revoke_ticket(self, ticket_id: str, now: datetime) -> Ticket | None:
        return await self._sessions.run(partial(_revoke, ticket_id, now), begin=True)

    async def ticket_uploads(self, ticket_id: str) -> tuple[str, ...]:
        return await self._sessions.run(partial(_uploads_of, ticket_id))
