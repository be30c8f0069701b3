"""Thin adapters between HTTP (FastAPI/Starlette) and the tus handler: parse, call, render."""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from upload_service.errors import ClientGone, RangeNotSatisfiable
from upload_service.services import Services, get_services
from upload_service.tus.handler import TusHandler, TusHeaders, TusResponse
from upload_service.tus.protocol import TUS_VERSION, parse_range, single_header
from upload_service.uploads import Upload

router = APIRouter()


def get_handler(request: Request) -> TusHandler:
    return get_services(request).handler


HandlerDep = Annotated[TusHandler, Depends(get_handler)]
ServicesDep = Annotated[Services, Depends(get_services)]


def tus_headers(request: Request) -> TusHeaders:
    """The request's tus headers, each sent once or repeated identically (else 400)."""

    def get(name: str) -> str | None:
        return single_header(name, request.headers.getlist(name))

    return TusHeaders(
        tus_resumable=get("Tus-Resumable"),
        content_type=get("Content-Type"),
        content_length=get("Content-Length"),
        upload_length=get("Upload-Length"),
        upload_defer_length=get("Upload-Defer-Length"),
        upload_offset=get("Upload-Offset"),
        upload_metadata=get("Upload-Metadata"),
        upload_checksum=get("Upload-Checksum"),
        upload_concat=get("Upload-Concat"),
    )


HeadersDep = Annotated[TusHeaders, Depends(tus_headers)]


async def request_body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ClientGone from None


def tus_allowed_methods(path: str) -> tuple[str, ...]:
    if path.rstrip("/") == "/files":
        return ("OPTIONS", "POST")
    return ("OPTIONS", "HEAD", "PATCH", "DELETE", "GET")


def render(result: TusResponse) -> Response:
    return Response(status_code=result.status, headers=result.headers)


@router.options("/files/")
@router.options("/files/{upload_id}")
async def options(handler: HandlerDep) -> Response:
    return render(handler.options())


@router.post("/files/")
async def create(request: Request, handler: HandlerDep, headers: HeadersDep) -> Response:
    result = await handler.create(headers, request_body(request))
    assert result.upload_id is not None
    response = render(result)
    response.headers["Location"] = str(request.url_for("tus_upload", upload_id=result.upload_id))
    return response


@router.head("/files/{upload_id}")
async def head(upload_id: str, handler: HandlerDep, headers: HeadersDep) -> Response:
    return render(await handler.head(upload_id, headers))


@router.patch("/files/{upload_id}")
async def patch(
    upload_id: str, request: Request, handler: HandlerDep, headers: HeadersDep
) -> Response:
    return render(await handler.patch(upload_id, headers, request_body(request)))


@router.delete("/files/{upload_id}")
async def delete(upload_id: str, handler: HandlerDep, headers: HeadersDep) -> Response:
    return render(await handler.delete(upload_id, headers))


@router.get("/files/{upload_id}", name="tus_upload")
async def download(upload_id: str, request: Request, handler: HandlerDep) -> Response:
    upload = await handler.downloadable(upload_id)
    size = upload.length or 0
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except ValueError:
        raise RangeNotSatisfiable(
            f"Range {request.headers.get('range', '')[:60]!r} lies outside the {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        ) from None
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(upload),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-transform",
    }
    if upload.sha256 is not None:
        encoded = base64.b64encode(bytes.fromhex(upload.sha256)).decode("ascii")
        headers["Repr-Digest"] = f"sha-256=:{encoded}:"  # RFC 9530
        headers["Digest"] = f"sha-256={encoded}"  # RFC 3230, for older clients
    start, end, status = 0, size, 200
    if wanted is not None:
        start, end, status = wanted.start, wanted.end + 1, 206
        headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{size}"
    headers["Content-Length"] = str(end - start)
    return StreamingResponse(
        handler.read(upload, start, end),
        status_code=status,
        headers=headers,
        media_type=content_type(upload),
    )


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*")
_UNSAFE_FILENAME = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|;%]')


def content_type(upload: Upload) -> str:
    for key in ("filetype", "contentType", "type", "mimeType"):
        raw = upload.metadata.get(key)
        if raw:
            value = raw.decode("utf-8", errors="replace").strip()
            if _MEDIA_TYPE.fullmatch(value):
                return value
    return "application/octet-stream"


def content_disposition(upload: Upload) -> str:
    """``attachment`` with an ASCII fallback and an RFC 6266 ``filename*`` for the real name."""
    raw = upload.metadata.get("filename") or upload.metadata.get("name") or b""
    name = raw.decode("utf-8", errors="replace")
    name = re.split(r"[/\\]", name)[-1].strip().strip(".") or upload.id
    name = _UNSAFE_FILENAME.sub("_", unicodedata.normalize("NFC", name))[:200]
    ascii_name = name.encode("ascii", errors="replace").decode("ascii").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
