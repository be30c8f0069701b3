"""Thin adapters between HTTP (FastAPI/Starlette) and the tus handler: parse, call, render.

The router's paths are relative: the app mounts it at ``UPLOAD_BASE_PATH``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from upload_service.auth.principal import Principal
from upload_service.errors import ClientGone, Forbidden
from upload_service.ops.logcontext import bind_upload_id
from upload_service.services import Services, get_services, services_dependency
from upload_service.tus.download import DownloadHeaders, prepare
from upload_service.tus.endpoint import Endpoint
from upload_service.tus.handler import TusHandler
from upload_service.tus.protocol import single_header
from upload_service.tus.request import TusHeaders, TusRequest
from upload_service.tus.types import TusResponse

router = APIRouter()


async def get_handler(request: Request) -> TusHandler:
    return get_services(request).handler


HandlerDep = Annotated[TusHandler, Depends(get_handler)]
ServicesDep = Annotated[Services, Depends(services_dependency)]


async def tus_headers(request: Request) -> TusHeaders:
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


async def tus_endpoint(request: Request) -> Endpoint:
    """The endpoint as this request's client sees it (scheme, host and prefix after any trusted
    proxy's headers were applied to the scope)."""
    base = request.base_url  # origin + root_path
    return Endpoint(
        path=base.path.rstrip("/") + get_services(request).settings.server.base_path,
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


async def request_principal(request: Request) -> Principal:
    """The caller, as the request's bearer token establishes it (401 unless it holds; the
    anonymous caller while the service runs open)."""
    authorization = single_header("Authorization", request.headers.getlist("authorization"))
    return await get_services(request).auth.principal(authorization)


PrincipalDep = Annotated[Principal, Depends(request_principal)]


async def download_principal(request: Request) -> Principal:
    """A download's caller: a signed link (``expires`` and ``signature``) reaches its one upload
    without a token, and a wrong or expired one is a 403, never a fallback; without them, the
    bearer token as on every route."""
    query = request.query_params
    if "signature" not in query and "expires" not in query:
        return await request_principal(request)
    signer = get_services(request).auth.signer
    if signer is None:
        raise Forbidden("signed download links are not enabled on this service")
    return signer.verify(
        request.path_params["upload_id"], query.get("expires"), query.get("signature")
    )


async def tus_request(
    request: Request, headers: HeadersDep, endpoint: EndpointDep, principal: PrincipalDep
) -> TusRequest:
    """The one value the handler reads of a request, besides its body."""
    upload_id = request.path_params.get("upload_id")
    bind_upload_id(upload_id)  # the request's log lines name the upload from here on
    return TusRequest(
        upload_id=upload_id,
        headers=headers,
        principal=principal,
        endpoint=endpoint,
    )


RequestDep = Annotated[TusRequest, Depends(tus_request)]


async def download_request(
    request: Request,
    headers: HeadersDep,
    endpoint: EndpointDep,
    principal: Annotated[Principal, Depends(download_principal)],
) -> TusRequest:
    return await tus_request(request, headers, endpoint, principal)


DownloadRequestDep = Annotated[TusRequest, Depends(download_request)]


@router.options("/")
@router.options("/{upload_id}")
async def options(handler: HandlerDep) -> Response:
    return render(handler.options())


@router.post("/")
async def create(request: Request, handler: HandlerDep, tus: RequestDep) -> Response:
    return render(await handler.create(tus, request_body(request)))


@router.head("/{upload_id}")
async def head(handler: HandlerDep, tus: RequestDep) -> Response:
    return render(await handler.head(tus))


@router.patch("/{upload_id}")
async def patch(request: Request, handler: HandlerDep, tus: RequestDep) -> Response:
    return render(await handler.patch(tus, request_body(request)))


@router.delete("/{upload_id}")
async def delete(handler: HandlerDep, tus: RequestDep) -> Response:
    return render(await handler.delete(tus))


@router.get("/{upload_id}", name="tus_upload")
async def download(request: Request, handler: HandlerDep, tus: DownloadRequestDep) -> Response:
    upload = await handler.downloadable(tus)
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
