"""Request ids and access lines: a pure ASGI middleware (it passes the body through message by
message, counting it, so streaming PATCHes stay streams).

Each request gets an id: the client's (or its proxy's) ``X-Request-Id`` when it is a sane token
(1 to 128 letters, digits and ``_.:-``, sent once), else a new random one. It is in the context of
every log record written while the request runs (``logcontext.request_context``) and goes back as
``X-Request-Id`` on every response, errors, 405s and CORS preflights included; an unhandled
exception is answered 500 here, so that response carries it too (the server still logs the
traceback). With ``UPLOAD_ACCESS_LOG`` on, one access line a request is logged as the last part of
its answer is sent (so it is written before the client has the answer), by the
``upload_service.access`` logger, in place of uvicorn's: client (after the trusted-proxy
middleware, which runs outside this one), method, path, the query with credentials redacted,
status, duration and the body bytes received. Headers are never logged.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upload_service.ops.logcontext import request_context
from upload_service.ops.logs import redact_query

REQUEST_ID_HEADER = "X-Request-Id"
_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")
_SANE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_BODY_METHODS = frozenset({"POST", "PATCH", "PUT"})

access_logger = logging.getLogger("upload_service.access")


def incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's ``X-Request-Id`` if it is sent once (or repeated identically) and sane."""
    values = {bytes(value) for name, value in headers if name.lower() == _HEADER}
    if len(values) != 1:
        return None
    text = values.pop().decode("latin-1").strip()
    return text if _SANE_ID.fullmatch(text) else None


def new_request_id() -> str:
    return uuid.uuid4().hex  # 32 hex digits, the shape of nginx's $request_id


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope["headers"]) or new_request_id()
        id_header = (_HEADER, request_id.encode("latin-1"))
        started = time.monotonic()
        status: int | None = None
        received = 0
        logged = not self.access_log

        def log_access() -> None:
            nonlocal logged
            if not logged:
                logged = True
                _log_access(scope, status, received, time.monotonic() - started)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != _HEADER
                ]
                message = {**message, "headers": [*headers, id_header]}
                if _bodiless(scope, status, headers):
                    # the head is the whole answer: a client has it once the server writes it
                    log_access()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # before the last byte goes out: once a client has its answer, the line is there
                log_access()
            await send(message)

        with request_context(request_id):
            try:
                await self.app(scope, counting_receive, send_with_id)
            except Exception:
                if status is None:  # answered here, so the 500 carries the request id
                    await send_with_id(_internal_error_start())
                    await send_with_id(
                        {"type": "http.response.body", "body": b"Internal Server Error"}
                    )
                raise
            finally:
                log_access()  # a request that ended without (the end of) an answer


def _bodiless(scope: Scope, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an answer ends with its head: no body can follow (HEAD, 204, 304) or none will."""
    if scope["method"] == "HEAD" or status in (204, 304):
        return True
    return any(name.lower() == b"content-length" and value == b"0" for name, value in headers)


def _internal_error_start() -> Message:
    return {
        "type": "http.response.start",
        "status": 500,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
    }


def _log_access(scope: Scope, status: int | None, received: int, seconds: float) -> None:
    method = str(scope["method"])
    path = str(scope["path"])
    query = redact_query(bytes(scope.get("query_string", b"")).decode("latin-1"))
    target = f"{path}?{query}" if query else path
    version = str(scope.get("http_version", "1.1"))
    client = scope.get("client")
    address = str(client[0]) if client else "-"
    duration_ms = round(seconds * 1000, 1)
    fields: dict[str, object] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "client": address,
        "http_version": version,
    }
    if query:
        fields["query"] = query
    body = ""
    if received or method in _BODY_METHODS:
        fields["bytes_received"] = received
        body = f" {received} bytes in"
    answered = "-" if status is None else str(status)
    access_logger.info(
        '%s - "%s %s HTTP/%s" %s%s %.1f ms',
        address,
        method,
        target,
        version,
        answered,
        body,
        duration_ms,
        extra=fields,
    )
