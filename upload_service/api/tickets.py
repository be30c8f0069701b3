"""Upload tickets over JSON (README "Upload tickets"): ``POST /api/tickets`` issues one to the
caller, ``GET`` and ``DELETE /api/tickets/{id}`` show and revoke it, for its issuer only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from upload_service.auth.principal import Principal
from upload_service.auth.tickets import TicketRequest, issue
from upload_service.errors import Forbidden, NotFound, ServiceError
from upload_service.services import Services, services_dependency
from upload_service.tickets import DEFAULT_TICKET_TTL, MAX_TICKET_TTL, Ticket, TicketRepository
from upload_service.tus.endpoint import Endpoint
from upload_service.tus.routes import EndpointDep, PrincipalDep

router = APIRouter()
ServicesDep = Annotated[Services, Depends(services_dependency)]
COMPANION_PATH = "/companion"  # + /<ticket>: Uppy's AwsS3 companionEndpoint (its /s3/... below)


class TicketIn(BaseModel):
    """What the issuer asks of the ticket; every field is optional."""

    model_config = ConfigDict(extra="forbid")

    max_size: int | None = Field(default=None, ge=0, description="bytes, per upload")
    allowed_types: list[str] | None = Field(default=None, description="patterns: video/*")
    uploads: int = Field(default=1, ge=1, description="uploads the ticket may create")
    expires_in: int = Field(default=DEFAULT_TICKET_TTL, ge=1, le=MAX_TICKET_TTL, description="s")
    metadata: dict[str, str] | None = Field(default=None, description="stamped on each upload")


class TicketOut(BaseModel):
    id: str
    state: str  # active, used_up, expired or revoked
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None
    uploads: int
    used: int
    max_size: int | None
    allowed_types: list[str]
    metadata: dict[str, str]
    upload_ids: list[str]  # the uploads made with it, oldest first
    tus_endpoint: str
    companion_endpoint: str
    ticket: str | None = None  # the bearer string: shown once, in the answer that issues it


def _state(ticket: Ticket, now: datetime) -> str:
    if ticket.revoked_at is not None:
        return "revoked"
    if ticket.expires_at <= now:
        return "expired"
    return "active" if ticket.left else "used_up"


async def service_root(request: Request) -> str:
    """The service's root as the client sees it (origin and any prefix a trusted proxy announced:
    where ``/companion`` is, whatever ``UPLOAD_BASE_PATH`` says of the tus endpoint)."""
    return str(request.base_url).rstrip("/")


RootDep = Annotated[str, Depends(service_root)]


def ticket_out(
    ticket: Ticket,
    endpoint: Endpoint,
    root: str,
    now: datetime,
    uploads: tuple[str, ...] = (),
    bearer: str | None = None,
) -> TicketOut:
    return TicketOut(
        id=ticket.id,
        state=_state(ticket, now),
        expires_at=ticket.expires_at,
        created_at=ticket.created_at,
        revoked_at=ticket.revoked_at,
        uploads=ticket.uploads,
        used=ticket.used,
        max_size=ticket.max_size,
        allowed_types=list(ticket.allowed_types),
        metadata=dict(ticket.metadata),
        upload_ids=list(uploads),
        tus_endpoint=(endpoint.origin or "") + endpoint.path + "/",
        companion_endpoint=root + COMPANION_PATH + "/" + (bearer or "<ticket>"),
        ticket=bearer,
    )


def _tickets(services: Services) -> TicketRepository:
    if services.tickets is None:
        raise ServiceError("upload tickets are not available on this service", status=501)
    return services.tickets


async def _issued(services: Services, principal: Principal, ticket_id: str) -> Ticket:
    """The caller's own ticket (another issuer's does not exist for it)."""
    if principal.ticket is not None:
        raise Forbidden("an upload ticket cannot see or revoke tickets")
    ticket = await _tickets(services).get_ticket(ticket_id)
    if ticket is None or ticket.owner != principal.owner:
        raise NotFound("no such ticket")
    return ticket


@router.post("/api/tickets", response_model=TicketOut, status_code=201)
async def create_ticket(
    asked: TicketIn,
    services: ServicesDep,
    principal: PrincipalDep,
    endpoint: EndpointDep,
    root: RootDep,
) -> TicketOut:
    """Issue an upload ticket: the only credential of one end user, for at most ``uploads``
    uploads that belong to the caller. Its ``ticket`` is shown here only."""
    now = services.handler.clock()
    ticket, bearer = issue(
        principal,
        TicketRequest(
            max_size=asked.max_size,
            allowed_types=None if asked.allowed_types is None else tuple(asked.allowed_types),
            uploads=asked.uploads,
            expires_in=asked.expires_in,
            metadata=asked.metadata,
        ),
        now,
    )
    await _tickets(services).add_ticket(ticket)
    return ticket_out(ticket, endpoint, root, now, bearer=bearer)


@router.get("/api/tickets/{ticket_id}", response_model=TicketOut)
async def get_ticket(
    ticket_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    endpoint: EndpointDep,
    root: RootDep,
) -> TicketOut:
    """The ticket, its uses and the uploads made with it (its issuer only)."""
    ticket = await _issued(services, principal, ticket_id)
    uploads = await _tickets(services).ticket_uploads(ticket.id)
    return ticket_out(ticket, endpoint, root, services.handler.clock(), uploads)


@router.delete("/api/tickets/{ticket_id}", status_code=204)
async def revoke_ticket(ticket_id: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Revoke the ticket (its issuer only): every later request with it is a 401. Uploads it
    made stay, the issuer's."""
    ticket = await _issued(services, principal, ticket_id)
    await _tickets(services).revoke_ticket(ticket.id, services.handler.clock())
    return Response(status_code=204)
