"""JSON endpoints: upload status and progress, liveness and readiness."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from upload_service.errors import ServiceError
from upload_service.outbox import OutboxEvent
from upload_service.services import Services, get_services
from upload_service.tus.protocol import metadata_text
from upload_service.tus.request import TusRequest
from upload_service.tus.routes import PrincipalDep
from upload_service.uploads import Upload

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


class UploadOut(BaseModel):
    id: str
    length: int | None
    offset: int
    received: int
    state: str
    metadata: dict[str, str | None]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    completed_at: datetime | None
    failure: str | None
    sha256: str | None
    concat: str | None
    parts: list[str]
    final_id: str | None
    state_changed_at: datetime | None

    @classmethod
    def of(cls, upload: Upload) -> UploadOut:
        fields = dataclasses.asdict(upload)
        fields["metadata"] = metadata_text(upload.metadata)  # bytes values shown as text
        return cls.model_validate(fields)


class DeliveryOut(BaseModel):
    """One event about an upload and how its delivery to the hooks went."""

    id: str
    type: str
    status: str  # pending, delivered or failed
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None

    @classmethod
    def of(cls, event: OutboxEvent) -> DeliveryOut:
        return cls(
            id=event.id,
            type=event.type.value,
            status=event.status.value,
            attempts=event.attempts,
            last_error=event.last_error,
            created_at=event.created_at,
            next_attempt_at=event.next_attempt_at,
            delivered_at=event.delivered_at,
        )


class Health(BaseModel):
    status: str
    detail: str | None = None


@router.get("/api/uploads/{upload_id}", response_model=UploadOut)
async def get_upload(upload_id: str, services: ServicesDep, principal: PrincipalDep) -> UploadOut:
    request = TusRequest(upload_id=upload_id, principal=principal)
    return UploadOut.of(await services.handler.get(request))


@router.get("/api/uploads/{upload_id}/deliveries", response_model=list[DeliveryOut])
async def get_deliveries(
    upload_id: str, services: ServicesDep, principal: PrincipalDep
) -> list[DeliveryOut]:
    """The upload's events (post-create, post-finish, ...) with their delivery state."""
    request = TusRequest(upload_id=upload_id, principal=principal)
    upload = await services.handler.get(request)  # exists, and this caller may see it
    if services.outbox is None:
        return []
    return [DeliveryOut.of(event) for event in await services.outbox.events_of(upload.id)]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health)
async def readyz(services: ServicesDep) -> JSONResponse:
    try:
        await services.repository.ping()
        await services.store.check()
    except ServiceError as exc:
        return JSONResponse(Health(status="unavailable", detail=exc.message).model_dump(), 503)
    except OSError as exc:
        detail = f"database unreachable: {exc}"
        return JSONResponse(Health(status="unavailable", detail=detail).model_dump(), 503)
    return JSONResponse(Health(status="ok").model_dump())
