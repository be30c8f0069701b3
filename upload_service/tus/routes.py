"""Thin adapters between HTTP (FastAPI/Starlette) and the tus handler: parse, call, render."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from upload_service.errors import ClientGone
from upload_service.services import Services, get_services
from upload_service.tus.download import DownloadHeaders, prepare
from upload_service.tus.handler import TusHandler, TusHeaders, TusResponse

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
    result = prepare(upload, download_headers(request))
    if result.span is None:
        return Response(status_code=result.status, headers=result.headers)
    return StreamingResponse(
        handler.read(upload, *result.span), status_code=result.status, headers=result.headers
    )


def download_headers(request: Request) -> DownloadHeaders:
    def joined(name: str) -> str | None:
        # repeated fields are one comma-separated list (RFC 9110 section 5.3); a date or a single
        # validator given twice then fails to parse and is ignored
        values = request.headers.getlist(name)
        return ", ".join(values) if values else None

    return DownloadHeaders(
        range=request.headers.get("range"),
        if_none_match=joined("if-none-match"),
        if_modified_since=joined("if-modified-since"),
        if_range=joined("if-range"),
    )
