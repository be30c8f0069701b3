"""Upload tickets: what an issuer (a JWT or an API key) lets one end user upload, without
handing out its own credential. A leaf of values and the repository's contract for them; the
bearer string is ``auth.tickets``'s, the routes are ``api.tickets``'.

A ticket may create at most ``uploads`` uploads. Each creation uses one, counted in the
database in the transaction that inserts the upload, as a compare-and-set from the count it
found (``UploadRepository.add``): two replicas that race for a ticket's last use never both
win, and an upload that is refused (quota, a revoked ticket) uses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from upload_service.errors import Forbidden, Unauthorized

MAX_TICKET_UPLOADS = 10_000
MAX_TICKET_TTL = 86_400  # seconds
DEFAULT_TICKET_TTL = 3_600


class TicketUsedUp(Forbidden):
    """The ticket has created every upload it may (403)."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """An issued ticket. ``secret_hash`` is the sha256 (hex) of its secret, which only the issuer
    was shown. ``owner`` is the issuer's (``auth.owners``), who owns the uploads; ``max_size``
    and ``allowed_types`` (raw patterns such as ``video/*``) already include the issuer's own
    caps; ``metadata`` is stamped on every upload made with it."""

    id: str
    secret_hash: str
    owner: str | None
    created_at: datetime
    expires_at: datetime
    uploads: int = 1
    used: int = 0
    max_size: int | None = None
    allowed_types: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    revoked_at: datetime | None = None

    def refusal(self, now: datetime) -> Unauthorized | None:
        """Why the ticket no longer holds as a credential at ``now`` (None: it holds)."""
        if self.revoked_at is not None:
            return Unauthorized("upload ticket was revoked")
        if self.expires_at <= now:
            return Unauthorized("upload ticket has expired")
        return None

    @property
    def left(self) -> int:
        return max(self.uploads - self.used, 0)


def used_up(ticket_id: str) -> TicketUsedUp:
    return TicketUsedUp(f"upload ticket {ticket_id} has created every upload it may")


class TicketRepository(Protocol):
    """Where tickets live: beside the uploads (an upload's insert uses one of its ticket's uses
    in the same transaction, see ``UploadRepository.add``)."""

    async def add_ticket(self, ticket: Ticket) -> None: ...

    async def get_ticket(self, ticket_id: str) -> Ticket | None: ...

    async def revoke_ticket(self, ticket_id: str, now: datetime) -> Ticket | None:
        """Revoke the ticket (a revoked one stays as it was revoked); None: no such ticket."""
        ...

    async def ticket_uploads(self, ticket_id: str) -> tuple[str, ...]:
        """The ids of the uploads made with the ticket, oldest first."""
        ...
