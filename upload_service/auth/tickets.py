"""Upload tickets as credentials: issuing one (``issue``: the bearer string, once, and the
ticket kept with its secret's hash) and recognising its bearer string (``TicketAuthenticator``).

A ticket's bearer string is ``ut_<id>_<secret>``: 32 and 40 hex digits, safe in a URL path
(``companion_endpoint`` carries it there, for clients that can send no header). Only the sha256
of the secret is stored, and it is compared in constant time. A ticket that was revoked or has
expired is a 401 on every request; one that has made every upload it may is a 403 on the next
creation only (its uploads stay reachable to it, to finish them).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from upload_service.auth.principal import Principal
from upload_service.errors import BadRequest, Forbidden, Unauthorized
from upload_service.tickets import (
    DEFAULT_TICKET_TTL,
    MAX_TICKET_TTL,
    MAX_TICKET_UPLOADS,
    Ticket,
    TicketRepository,
)
from upload_service.tus.content_types import parse_allowed_types

PREFIX = "ut_"
_TOKEN = re.compile(r"ut_([0-9a-f]{32})_([0-9a-f]{40})")
MAX_STAMPED = 32  # metadata fields a ticket may stamp
MAX_STAMP_BYTES = 4096


def looks_like_ticket(token: str) -> bool:
    """Whether ``token`` has a ticket's form (anything else goes to the other authenticators:
    an API key that merely starts with ``ut_`` is still an API key)."""
    return _TOKEN.fullmatch(token) is not None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class TicketRequest:
    """What an issuer asks of a new ticket (``POST /api/tickets``), checked by ``issue``."""

    max_size: int | None = None
    allowed_types: tuple[str, ...] | None = None
    uploads: int = 1
    expires_in: int = DEFAULT_TICKET_TTL
    metadata: Mapping[str, str] | None = None


def _within(pattern: str, allowed: tuple[str, ...]) -> bool:
    """Whether every type ``pattern`` admits is admitted by one of ``allowed``."""
    major, _, minor = pattern.partition("/")
    return any(
        other in ("*/*", pattern) or (other == f"{major}/*" and minor != "*") for other in allowed
    )


def _types(asked: tuple[str, ...] | None, issuer: tuple[str, ...]) -> tuple[str, ...]:
    if not asked:
        return issuer
    try:
        patterns = parse_allowed_types(",".join(asked))
    except ValueError as exc:
        raise BadRequest(f"allowed_types {exc}") from None
    if issuer:
        for pattern in patterns:
            if not _within(pattern, issuer):
                raise Forbidden(
                    f"allowed_types: {pattern} is not among the types your credential may "
                    f"upload ({', '.join(issuer)})"
                )
    return patterns


def _stamp(metadata: Mapping[str, str] | None) -> dict[str, str]:
    fields = dict(metadata or {})
    if len(fields) > MAX_STAMPED:
        raise BadRequest(f"metadata has {len(fields)} fields, at most {MAX_STAMPED}")
    size = 0
    for key, value in fields.items():
        if not key or not key.isascii() or not key.isprintable() or " " in key or "," in key:
            raise BadRequest(f"metadata key {key[:40]!r} must be printable ASCII without spaces")
        size += len(key) + len(value.encode())
    if size > MAX_STAMP_BYTES:
        raise BadRequest(f"metadata is {size} bytes, at most {MAX_STAMP_BYTES}")
    return fields


def issue(issuer: Principal, asked: TicketRequest, now: datetime) -> tuple[Ticket, str]:
    """A new ticket for ``issuer`` and its bearer string (shown once). The ticket's caps are the
    issuer's own and the asked ones together: a ticket never allows more than its issuer."""
    if issuer.ticket is not None or issuer.only is not None:
        raise Forbidden("an upload ticket cannot issue tickets")
    if not 1 <= asked.uploads <= MAX_TICKET_UPLOADS:
        raise BadRequest(f"uploads must be between 1 and {MAX_TICKET_UPLOADS}")
    if not 1 <= asked.expires_in <= MAX_TICKET_TTL:
        raise BadRequest(f"expires_in must be between 1 and {MAX_TICKET_TTL} seconds")
    if asked.max_size is not None and asked.max_size < 0:
        raise BadRequest("max_size must be a whole number of bytes, at least 0")
    caps = [size for size in (asked.max_size, issuer.max_size) if size is not None]
    ticket_id = uuid.uuid4().hex
    secret = secrets.token_hex(20)
    ticket = Ticket(
        id=ticket_id,
        secret_hash=_hash(secret),
        owner=issuer.owner,
        created_at=now,
        expires_at=now + timedelta(seconds=asked.expires_in),
        uploads=asked.uploads,
        max_size=min(caps) if caps else None,
        allowed_types=_types(asked.allowed_types, issuer.allowed_types),
        metadata=_stamp(asked.metadata),
    )
    return ticket, f"{PREFIX}{ticket_id}_{secret}"


def principal_of(ticket: Ticket) -> Principal:
    return Principal(
        owner=ticket.owner,
        max_size=ticket.max_size,
        allowed_types=ticket.allowed_types,
        ticket=ticket.id,
        stamp=tuple(sorted(ticket.metadata.items())),
    )


class TicketAuthenticator:
    """Recognises a ticket's bearer string (``ut_...``); anything else is not its kind."""

    def __init__(self, tickets: TicketRepository, clock: Callable[[], datetime]) -> None:
        self._tickets = tickets
        self._clock = clock

    async def authenticate(self, token: str) -> Principal | None:
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        ticket = await self._tickets.get_ticket(match.group(1))
        if ticket is None or not hmac.compare_digest(ticket.secret_hash, _hash(match.group(2))):
            raise Unauthorized("invalid upload ticket")
        refusal = ticket.refusal(self._clock())
        if refusal is not None:
            raise refusal
        return principal_of(ticket)

    async def aclose(self) -> None:
        return None
