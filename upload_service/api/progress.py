"""``GET /api/uploads/{id}/events``: an upload's progress and state changes as Server-Sent Events.

Any replica can serve the stream: it polls the database (the one source of truth, which every
replica's PATCH writes its progress to) every ``UPLOAD_SSE_POLL_INTERVAL`` seconds and sends an
event when the upload's state, offset, received bytes or length changed; a comment line every
``UPLOAD_SSE_HEARTBEAT`` seconds of quiet keeps proxies from closing the connection. The stream
ends after a final state (ready, failed, terminated, expired), when the upload's row is gone, when
the server begins to shut down (the browser's EventSource reconnects elsewhere), or when the
client goes (the server notices at once and cancels the stream). Each stream holds one upload
record and one encoded event at a time.

Events: ``state`` (the first, and every state change) and ``progress`` (bytes moved), each a JSON
``UploadEvent``; a row that disappears ends with ``gone``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from upload_service.api.routes import ServicesDep, VideoOut
from upload_service.db.base import UploadRepository
from upload_service.errors import ServiceError
from upload_service.ops.logcontext import bind_upload_id
from upload_service.tus.handler import TusHandler
from upload_service.tus.request import TusRequest
from upload_service.tus.routes import PrincipalDep
from upload_service.uploads import ENDED_STATES, Upload, UploadState

logger = logging.getLogger("upload_service.api")

FINAL_STATES = (UploadState.READY, *ENDED_STATES)
RETRY_MS = 2000  # how soon a browser's EventSource reconnects after the stream ends

router = APIRouter()


class UploadEvent(BaseModel):
    """One event's data: where the upload stands."""

    id: str
    state: str
    offset: int  # durable bytes
    received: int  # bytes arrived, durable or not yet
    length: int | None
    sha256: str | None
    failure: str | None
    video: VideoOut | None

    @classmethod
    def of(cls, upload: Upload) -> UploadEvent:
        video = (
            None
            if upload.video is None
            else VideoOut.model_validate(upload.video, from_attributes=True)
        )
        return cls(
            id=upload.id,
            state=upload.state.value,
            offset=upload.offset,
            received=upload.received,
            length=upload.length,
            sha256=upload.sha256,
            failure=upload.failure,
            video=video,
        )


def message(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"


async def upload_events(
    upload: Upload,
    repository: UploadRepository,
    handler: TusHandler,
    *,
    interval: float,
    heartbeat: float,
) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    sent: tuple[UploadState, int, int, int | None] | None = None
    quiet_since = anyio.current_time()
    while True:
        now = anyio.current_time()
        seen = (upload.state, upload.offset, upload.received, upload.length)
        if seen != sent:
            kind = "state" if sent is None or sent[0] is not upload.state else "progress"
            yield message(kind, UploadEvent.of(upload).model_dump_json())
            sent, quiet_since = seen, now
        elif now - quiet_since >= heartbeat:
            yield ": heartbeat\n\n"
            quiet_since = now
        if upload.state in FINAL_STATES or handler.draining:
            return
        await anyio.sleep(interval)
        try:
            current = await repository.get(upload.id)
        except ServiceError as exc:  # a database outage: keep the stream, try again next time
            logger.warning("progress stream could not read the upload: %s", exc.message)
            continue
        if current is None:  # forgotten (its tombstone purged)
            yield message("gone", f'{{"id": "{upload.id}"}}')
            return
        upload = current


@router.get(
    "/api/uploads/{upload_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def events(
    upload_id: str, services: ServicesDep, principal: PrincipalDep
) -> StreamingResponse:
    """The upload's progress and state changes as Server-Sent Events (see the module doc)."""
    bind_upload_id(upload_id)
    request = TusRequest(upload_id=upload_id, principal=principal)
    upload = await services.handler.get(request)  # exists, and this caller may see it: else 404
    settings = services.settings
    stream = upload_events(
        upload,
        services.repository,
        services.handler,
        interval=settings.api.sse_poll_interval,
        heartbeat=settings.api.sse_heartbeat,
    )
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # nginx: do not buffer
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
