"""Pure ASGI middleware (they never touch the request body, so streaming stays untouched)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upload_service.tus.protocol import TUS_VERSION

_OVERRIDABLE = {"PATCH", "DELETE", "HEAD", "GET", "POST", "OPTIONS"}
# What an answer that sets no policy of its own (JSON, errors, redirects, files served as they are)
# lets a browser do with it as a document: nothing, not even be framed.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_NOSNIFF = (b"x-content-type-options", b"nosniff")


def route_path(scope: Scope) -> str:
    """The path below ``root_path`` (a proxy's prefix), as Starlette routes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


def under(path: str, base_path: str) -> bool:
    """``path`` is ``base_path`` itself or lies below it."""
    return path == base_path or path.startswith(base_path + "/")


class MethodOverrideMiddleware:
    """Honour ``X-HTTP-Method-Override`` (tus 1.0.0: clients behind restrictive proxies use it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    method = value.decode("latin-1").strip().upper()
                    if method in _OVERRIDABLE:
                        scope = dict(scope, method=method)
                    break
        await self.app(scope, receive, send)


class TusResumableMiddleware:
    """Every response under the tus base path carries ``Tus-Resumable``, errors and 405s too."""

    def __init__(self, app: ASGIApp, base_path: str = "/files") -> None:
        self.app = app
        self.base_path = base_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not under(route_path(scope), self.base_path):
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"tus-resumable" for name, _ in headers):
                    headers.append((b"tus-resumable", TUS_VERSION.encode()))
                    message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_header)


class SecurityHeadersMiddleware:
    """Every answer carries ``X-Content-Type-Options: nosniff`` and a
    ``Content-Security-Policy``: its own where it sets one (the upload page, the docs page and
    downloads do), else ``csp``. A header the answer set is never replaced. Only the head of
    the answer is looked at. Outermost, so that answers made by other middleware (a CORS
    preflight, the request log's 500) carry them too."""

    def __init__(self, app: ASGIApp, csp: str = DEFAULT_CSP) -> None:
        self.app = app
        self.csp = (b"content-security-policy", csp.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in headers}
                missing = [pair for pair in (_NOSNIFF, self.csp) if pair[0] not in present]
                if missing:
                    message = dict(message, headers=[*headers, *missing])
            await send(message)

        await self.app(scope, receive, send_with_headers)
