"""Upload tickets in memory (``upload_service.tickets``): the ``TicketRepository`` side of
``MemoryUploadRepository``, whose inserts and transitions use a ticket and give its use back in
the same step (``_use_ticket``, ``_give_back``), as ``SqlTickets`` is of the SQL repository.

For tests and protocol rules. Its crash story is plain: every ticket is lost with the process.
Each method changes its state before it yields to the event loop, so it is one step.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime

import anyio.lowlevel

from upload_service.errors import Unauthorized, Unavailable
from upload_service.tickets import Ticket, used_up
from upload_service.uploads import Upload


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC, a naive one taken as UTC (as the SQL repository reads it back)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)


class MemoryTickets:
    """``TicketRepository`` over a dictionary (a base of the memory repository)."""

    def __init__(self) -> None:
        self._tickets: dict[str, Ticket] = {}

    def _use_ticket(self, ticket_id: str, now: datetime) -> None:
        """As ``db.tickets.use_ticket``: a use from a count below the limit, while the ticket
        neither was revoked nor expired; the last check before the insert, so nothing else can
        refuse the upload after its ticket was used."""
        ticket = self._tickets.get(ticket_id)
        if ticket is None:
            raise Unauthorized("invalid upload ticket")
        refusal = ticket.refusal(utc(now))
        if refusal is not None:
            raise refusal
        if ticket.used >= ticket.uploads:
            raise used_up(ticket_id)
        self._tickets[ticket_id] = replace(ticket, used=ticket.used + 1)

    def _give_back(self, upload: Upload) -> None:
        """As ``db.tickets.give_back``, in the step of the transition that ended ``upload``."""
        ticket = None if upload.ticket is None else self._tickets.get(upload.ticket)
        if ticket is not None and ticket.used > 0:
            self._tickets[ticket.id] = replace(ticket, used=ticket.used - 1)

    async def add_ticket(self, ticket: Ticket) -> None:
        if ticket.id in self._tickets:
            raise Unavailable(f"database unavailable: ticket {ticket.id} exists already")
        self._tickets[ticket.id] = replace(
            ticket,
            metadata=dict(ticket.metadata),
            created_at=utc(ticket.created_at),
            expires_at=utc(ticket.expires_at),
            revoked_at=utc_or_none(ticket.revoked_at),
        )
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        ticket = self._tickets.get(ticket_id)
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return None if ticket is None else copy.deepcopy(ticket)

    async def revoke_ticket(self, ticket_id: str, now: datetime) -> Ticket | None:
        ticket = self._tickets.get(ticket_id)
        if ticket is not None and ticket.revoked_at is None:
            ticket = self._tickets[ticket_id] = replace(ticket, revoked_at=utc(now))
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return None if ticket is None else copy.deepcopy(ticket)
