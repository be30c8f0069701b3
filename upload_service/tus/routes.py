"""Thin adapters between HTTP (Starlette) and the tus handler: parse, call, render.

The tus endpoints are one ASGI layer (``TusEndpoints``) inside the app's middleware, in front of
FastAPI's router: a tus request is matched by two string tests and answered without FastAPI's
routing, dependency solving and exception layers, which cost more than the handler's own work on
a HEAD. Every middleware (security headers, proxy headers, request log, CORS, method override,
``Tus-Resumable``, metrics) still wraps it. A path under the base path that names no tus
resource goes on to the router, which answers 404; one slash short of or beyond a tus resource
(``/files``, ``/files/<id>/``), it is redirected (307) as Starlette's router did.

The request's parts that the JSON API shares (the caller, the endpoint, the body) are here too,
as plain functions of a request and as FastAPI dependencies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from starlette.datastructures import URL
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from upload_service.auth.principal import Principal
from upload_service.errors import ClientGone, Forbidden, ServiceError
from upload_service.ops.interim import INTERIM
from upload_service.ops.logcontext import bind_upload_id
from upload_service.ops.middleware import route_path
from upload_service.services import get_services
from upload_service.tus.download import DownloadHeaders, prepare
from upload_service.tus.draft import Draft, Interim, Problem
from upload_service.tus.endpoint import Endpoint
from upload_service.tus.handler import TusHandler
from upload_service.tus.protocol import COLLECTION_METHODS, UPLOAD_METHODS, single_header
from upload_service.tus.request import TusHeaders, TusRequest
from upload_service.tus.types import TusResponse

logger = logging.getLogger("upload_service")


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
        draft_interop_version=get("Upload-Draft-Interop-Version"),
        upload_complete=get("Upload-Complete"),
        upload_incomplete=get("Upload-Incomplete"),
        content_digest=get("Content-Digest"),
        repr_digest=get("Repr-Digest"),
    )


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


async def request_principal(request: Request) -> Principal:
    """The caller, as the request's bearer token establishes it (401 unless it holds; the
    anonymous caller while the service runs open)."""
    authorization = single_header("Authorization", request.headers.getlist("authorization"))
    return await get_services(request).auth.principal(authorization)


PrincipalDep = Annotated[Principal, Depends(request_principal)]


async def download_principal(request: Request, upload_id: str) -> Principal:
    """A download's caller: a signed link (``expires`` and ``signature``) reaches its one upload
    without a token, and a wrong or expired one is a 403, never a fallback; without them, the
    bearer token as on every route."""
    query = request.query_params
    if "signature" not in query and "expires" not in query:
        return await request_principal(request)
    signer = get_services(request).auth.signer
    if signer is None:
        raise Forbidden("signed download links are not enabled on this service")
    return signer.verify(upload_id, query.get("expires"), query.get("signature"))


def interim_sender(request: Request) -> Interim | None:
    """The HTTP server's sender of interim responses for this request, if it offers one and
    ``UPLOAD_INTERIM_RESPONSES`` lets it be used: ``auto`` not for a request that came through
    a proxy, which may not pass a 1xx on (nginx turns one into its final answer)."""
    when = get_services(request).settings.server.interim_responses
    proxied = "forwarded" in request.headers or "x-forwarded-for" in request.headers
    if when == "never" or (when == "auto" and proxied):
        return None
    offered = request.scope.get("extensions", {}).get(INTERIM, {})
    sender: Interim | None = offered.get("send")
    return sender


def draft_of(handler: TusHandler) -> Draft:
    return Draft(handler, max_size=handler.max_size, clock=handler.clock)


def render(result: TusResponse) -> Response:
    return Response(status_code=result.status, headers=result.headers)


def error_response(request: Request, exc: ServiceError) -> Response:
    """A refusal on a tus path: its one-line reason as text (``Tus-Resumable`` comes from
    ``TusResumableMiddleware``, as on every tus answer)."""
    if exc.status >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    if isinstance(exc, Problem):
        body = {**exc.problem, "detail": exc.message}
        return JSONResponse(
            body, exc.status, headers=exc.headers, media_type="application/problem+json"
        )
    return PlainTextResponse(exc.message + "\n", status_code=exc.status, headers=exc.headers)


class TusEndpoints:
    """``OPTIONS``/``POST`` on ``<base>/`` and ``OPTIONS``/``HEAD``/``PATCH``/``DELETE``/``GET`` on
    ``<base>/<id>``; any other method there is a 405 naming the allowed ones. The scope gets the
    route and its parameter, as a router's match leaves them, for ``RequestMetrics``."""

    def __init__(self, app: ASGIApp, *, base_path: str) -> None:
        self.app = app
        self.base_path = base_path
        self._prefix = base_path + "/"

    def _target(self, path: str) -> str | None:
        """``""`` for the collection, the upload id for an upload, None for any other path."""
        if not path.startswith(self._prefix):
            return None
        rest = path[len(self._prefix) :]
        return None if "/" in rest else rest

    def _redirect(self, scope: Scope) -> Response | None:
        """A path one slash short of or beyond a tus resource (``/files``, ``/files/<id>/``): a
        307 to it, as Starlette's router redirects slashes for its routes."""
        path = route_path(scope)
        if path == self.base_path:
            moved = dict(scope, path=scope["path"] + "/")
        elif path.endswith("/") and self._target(path.rstrip("/")):
            moved = dict(scope, path=scope["path"].rstrip("/"))
        else:
            return None
        return RedirectResponse(str(URL(scope=moved)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = self._target(route_path(scope))
        if target is None:
            redirect = self._redirect(scope)
            if redirect is None:
                await self.app(scope, receive, send)
            else:
                await redirect(scope, receive, send)
            return
        scope["route"] = self
        if target:
            scope["path_params"] = {"upload_id": target}
        request = Request(scope, receive)
        try:
            response = await self._answer(request, target)
        except ServiceError as exc:
            response = error_response(request, exc)
        await response(scope, receive, send)

    async def _answer(self, request: Request, upload_id: str) -> Response:
        method = request.method
        allowed = UPLOAD_METHODS if upload_id else COLLECTION_METHODS
        if method not in allowed:
            raise ServiceError(
                f"{method} is not allowed here",
                status=405,
                code="http_error",
                headers={"Allow": ", ".join(allowed)},
            )
        handler: TusHandler = get_services(request).handler
        if method == "OPTIONS":
            options = handler.options()
            options.headers.update(draft_of(handler).discovery_headers())
            return render(options)
        headers = tus_headers(request)  # a repeated header is a 400 before any other work
        if method == "GET":
            principal = await download_principal(request, upload_id)
        else:
            principal = await request_principal(request)
        if upload_id:
            bind_upload_id(upload_id)  # the request's log lines name the upload from here on
        tus = TusRequest(
            upload_id=upload_id or None,
            headers=headers,
            principal=principal,
            endpoint=await tus_endpoint(request),
        )
        if headers.draft_interop_version is not None and method != "GET":
            return await self._draft(request, draft_of(handler), tus)
        if method == "POST":
            return render(await handler.create(tus, request_body(request)))
        if method == "HEAD":
            return render(await handler.head(tus))
        if method == "PATCH":
            return render(await handler.patch(tus, request_body(request)))
        if method == "DELETE":
            return render(await handler.delete(tus))
        return await self._download(request, handler, tus)

    @staticmethod
    async def _draft(request: Request, draft: Draft, tus: TusRequest) -> Response:
        """A request of the IETF draft (``tus/draft.py``); its 104 goes out through the HTTP
        server's interim sender when the server offers one (``ops.interim``)."""
        method = request.method
        if method == "POST":
            interim = interim_sender(request)
            return render(await draft.create(tus, request_body(request), interim=interim))
        if method == "HEAD":
            return render(await draft.head(tus))
        if method == "PATCH":
            return render(await draft.patch(tus, request_body(request)))
        return render(await draft.delete(tus))

    @staticmethod
    async def _download(request: Request, handler: TusHandler, tus: TusRequest) -> Response:
        upload = await handler.downloadable(tus)
        if get_services(request).settings.s3.download_redirect:
            url = await handler.direct.download_url(upload)  # None: the store cannot presign
            if url is not None:
                return Response(
                    status_code=302, headers={"Location": url, "Cache-Control": "no-store"}
                )
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
