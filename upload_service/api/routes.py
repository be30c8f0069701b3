"""JSON endpoints: upload status and progress, liveness and readiness."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from upload_service.errors import ServiceError
from upload_service.ops.logcontext import bind_upload_id
from upload_service.outbox import OutboxEvent, latest_final
from upload_service.services import Services, services_dependency
from upload_service.storage.space import free_bytes
from upload_service.tus.endpoint import Endpoint
from upload_service.tus.protocol import metadata_text
from upload_service.tus.request import TusRequest
from upload_service.tus.routes import EndpointDep, PrincipalDep
from upload_service.uploads import Upload, UploadState

router = APIRouter()
ServicesDep = Annotated[Services, Depends(services_dependency)]


class VideoOut(BaseModel):
    """What ffprobe found in a verified video (README "Video details")."""

    container: str  # ffprobe's format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration: float | None  # seconds
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    frame_rate: float | None  # frames a second
    bit_rate: int | None  # bits a second


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
    # a partial upload's live final uploads, oldest first; final_id: the most recent of them
    finals: list[str]
    final_id: str | None
    state_changed_at: datetime | None
    owner: str | None
    ticket: str | None = None  # the upload ticket it was made with (README "Upload tickets")
    direct: bool = False  # its bytes went straight to the bucket (README "Direct uploads")
    # a ready upload's download URL; signed (expires, signature) when the service has a signing
    # key, so a browser's <video src> works without a token
    download_url: str | None = None
    # a ready video's details; null: not a video, not probed (README "Video details")
    video: VideoOut | None = None

    @classmethod
    def of(cls, upload: Upload, download_url: str | None = None) -> UploadOut:
        fields = dataclasses.asdict(upload)
        fields["metadata"] = metadata_text(upload.metadata)  # bytes values shown as text
        fields["download_url"] = download_url
        fields["final_id"] = latest_final(upload)
        return cls.model_validate(fields)


class DeliveryOut(BaseModel):
    """One event about an upload and how its delivery to the hooks went."""

    id: str
    type: str
    status: str  # pending, delivered or failed
    attempts: int
    # the last failed attempt's fixed reason (``FailureReason``), never the receiver's words
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
            last_error=None if event.last_error is None else event.last_error.value,
            created_at=event.created_at,
            next_attempt_at=event.next_attempt_at,
            delivered_at=event.delivered_at,
        )


class Health(BaseModel):
    status: str
    detail: str | None = None


def download_url_of(upload: Upload, services: Services, endpoint: Endpoint) -> str | None:
    """A ready upload's download URL, signed when the service has a signing key (none for a
    partial upload, which is never served: ``TusHandler.downloadable``)."""
    if upload.state is not UploadState.READY or upload.is_partial:
        return None
    download_url = endpoint.url(upload.id, relative=services.settings.server.relative_location)
    signer = services.auth.signer
    if signer is not None:
        download_url += "?" + signer.query(upload.id)
    return download_url


@router.get("/api/uploads/{upload_id}", response_model=UploadOut)
async def get_upload(
    upload_id: str, services: ServicesDep, principal: PrincipalDep, endpoint: EndpointDep
) -> UploadOut:
    bind_upload_id(upload_id)
    request = TusRequest(upload_id=upload_id, principal=principal, endpoint=endpoint)
    upload = await services.handler.get(request)
    return UploadOut.of(upload, download_url_of(upload, services, endpoint))


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
    try:
        free = await anyio.to_thread.run_sync(free_bytes, services.settings.storage.data_dir)
    except OSError as exc:
        detail = f"cannot inspect the data directory: {exc.strerror or exc}"
        return JSONResponse(Health(status="unavailable", detail=detail).model_dump(), 503)
    if free < max(
        services.settings.storage.min_free_bytes, 1
    ):  # UPLOAD_MIN_FREE_BYTES, or none at all
        detail = f"disk full: {free} bytes free"
        return JSONResponse(Health(status="unavailable", detail=detail).model_dump(), 503)
    return JSONResponse(Health(status="ok").model_dump())
