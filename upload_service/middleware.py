"""Pure ASGI middleware (they never touch the request body, so streaming stays untouched)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upload_service.tus.protocol import TUS_VERSION

_OVERRIDABLE = {"PATCH", "DELETE", "HEAD", "GET", "POST", "OPTIONS"}


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
    """Every response under the tus prefix carries ``Tus-Resumable``, errors and 405s included."""

    def __init__(self, app: ASGIApp, prefix: str = "/files") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
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
