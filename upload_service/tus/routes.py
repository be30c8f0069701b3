"""Thin adapters between HTTP (FastAPI/Starlette) and the tus handler: parse, call, render.

The router's paths are relative: the app mounts it at ``UPLOAD_BASE_PATH``.
"""

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
from upload_service.tus.endpoint import Endpoint
from upload_service.tus.handler import TusHandler, TusHeaders, TusResponse
from upload_service.tus.protocol import TUS_VERSION, parse_range
from upload_service.uploads import Upload

router = APIRouter()


def get_handler(request: Request) -> TusHandler:
    return get_services(request).handler


HandlerDep = Annotated[TusHandler, Depends(get_handler)]
ServicesDep = Annotated[Services, Depends(get_services)]


def tus_headers(request: Request) -> TusHeaders:
    get = request.headers.get
    return TusHeaders(
        tus_resumable=get("tus-resumable"),
        content_type=get("content-type"),
        content_length=get("content-length"),
        upload_length=get("upload-length"),
        upload_defer_length=get("upload-defer-length"),
        upload_offset=get("upload-offset"),
        upload_metadata=get("upload-metadata"),
        upload_checksum=get("upload-checksum"),
        upload_concat=get("upload-concat"),
    )


HeadersDep = Annotated[TusHeaders, Depends(tus_headers)]


def tus_endpoint(request: Request) -> Endpoint:
    """The endpoint as this request's client sees it (scheme, host and prefix after any trusted
    proxy's headers were applied to the scope)."""
    base = request.base_url  # origin + root_path
    return Endpoint(
        path=base.path.rstrip("/") + get_services(request).settings.base_path,
        origin=f"{base.scheme}://{base.netloc}",
    )


EndpointDep = Annotated[Endpoint, Depends(tus_endpoint)]


async def request_body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ClientGone from None


def tus_allowed_methods(route_path: str, base_path: str) -> tuple[str, ...]:
    if route_path.rstrip("/") == base_path:
        return ("OPTIONS", "POST")
    return ("OPTIONS", "HEAD", "PATCH", "DELETE", "GET")


def render(result: TusResponse) -> Response:
    return Response(status_code=result.status, headers=result.headers)


@router.options("/")
@router.options("/{upload_id}")
async def options(handler: HandlerDep) -> Response:
    return render(handler.options())


@router.post("/")
async def create(
    request: Request, handler: HandlerDep, headers: HeadersDep, endpoint: EndpointDep
) -> Response:
    return render(await handler.create(headers, request_body(request), endpoint))


@router.head("/{upload_id}")
async def head(
    upload_id: str, handler: HandlerDep, headers: HeadersDep, endpoint: EndpointDep
) -> Response:
    return render(await handler.head(upload_id, headers, endpoint))


@router.patch("/{upload_id}")
async def patch(
    upload_id: str, request: Request, handler: HandlerDep, headers: HeadersDep
) -> Response:
    return render(await handler.patch(upload_id, headers, request_body(request)))


@router.delete("/{upload_id}")
async def delete(upload_id: str, handler: HandlerDep, headers: HeadersDep) -> Response:
    return render(await handler.delete(upload_id, headers))


@router.get("/{upload_id}", name="tus_upload")
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
