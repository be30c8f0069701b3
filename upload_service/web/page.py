"""The upload page: ``GET /`` and its few static files (``web/static``), shipped in the package.

No build step and no third-party code: the page is plain HTML, CSS and two ES modules (a small tus
client and the page around it). The HTML names the tus endpoint, the JSON API and the chunk size as
data attributes, filled in per request because the paths depend on the proxy prefix a request
arrived under (``root_path``) and on ``UPLOAD_BASE_PATH``. Nothing runs inline, so the page is
served with a strict Content-Security-Policy.

Files are read from the package once, on first use, in a worker thread, and kept in memory (a few
tens of KiB). They are not content-hashed into their names (there is no build step to do it), so
they are served ``Cache-Control: no-cache`` with a strong ``ETag``: a browser revalidates and gets
a 304, and never runs a stale script after an upgrade.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response

from upload_service.errors import NotFound
from upload_service.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
# What may be served, by name, with its type: nothing else under the directory is reachable.
ASSET_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "tus.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE_TEMPLATE = "index.html"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
# The page itself: its own scripts and styles only; it talks to this origin and plays downloads
# from it (a signed download URL is same-origin too).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load(names: tuple[str, ...]) -> dict[str, bytes]:
    return {name: (STATIC_DIR / name).read_bytes() for name in names}


class PageFiles:
    """The page template and assets, read from the package on first use (in a thread)."""

    def __init__(self) -> None:
        self._template: str | None = None
        self._assets: dict[str, Asset] | None = None
        self._lock = anyio.Lock()

    async def _ensure(self) -> tuple[str, dict[str, Asset]]:
        async with self._lock:
            if self._template is None or self._assets is None:
                names = (PAGE_TEMPLATE, *ASSET_TYPES)
                files = await anyio.to_thread.run_sync(_load, names)
                self._template = files[PAGE_TEMPLATE].decode("utf-8")
                self._assets = {
                    name: Asset(
                        body=files[name],
                        media_type=media_type,
                        etag='"' + hashlib.sha256(files[name]).hexdigest()[:32] + '"',
                    )
                    for name, media_type in ASSET_TYPES.items()
                }
            return self._template, self._assets

    async def template(self) -> str:
        return (await self._ensure())[0]

    async def asset(self, name: str) -> Asset:
        assets = (await self._ensure())[1]
        found = assets.get(name)
        if found is None:
            raise NotFound(f"no such file: {name}")
        return found


def render_page(template: str, *, root: str, endpoint: str, api: str, chunk_size: int) -> str:
    """The page with its paths filled in (every value HTML-escaped for an attribute)."""
    values = {
        "root": root,
        "endpoint": endpoint,
        "api": api,
        "chunk_size": str(chunk_size),
    }
    page = template
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value, quote=True))
    return page


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    if wanted is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return etag in tags or "*" in tags


def page_router(settings: Settings) -> APIRouter:
    """``GET /`` (the page) and ``GET /static/{name}`` (its files), for this service's settings."""
    router = APIRouter(include_in_schema=False)
    files = PageFiles()

    @router.get("/")
    async def page(request: Request) -> Response:
        root = request.base_url.path  # under a proxy's prefix: "/prefix/"; else "/"
        if not root.endswith("/"):
            root += "/"
        body = render_page(
            await files.template(),
            root=root,
            endpoint=root.rstrip("/") + settings.server.base_path + "/",
            api=root + "api",
            chunk_size=settings.server.page_chunk_size,
        )
        headers = {
            **SECURITY_HEADERS,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": PAGE_CSP,
        }
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    @router.api_route("/static/{name}", methods=["GET", "HEAD"])
    async def asset(name: str, request: Request) -> Response:
        found = await files.asset(name)
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": found.etag}
        if _not_modified(request, found.etag):
            return Response(status_code=304, headers=headers)
        body = b"" if request.method == "HEAD" else found.body
        response = Response(body, media_type=found.media_type, headers=headers)
        response.headers["Content-Length"] = str(len(found.body))
        return response

    return router
