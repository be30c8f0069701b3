"""The OpenAPI docs at ``/docs``: Swagger UI with its script, stylesheet and icon served by this
service (from the ``fastapi-offline`` package, which ships them), so the page works on a machine
without internet. ``/api/docs``, where the docs used to be, redirects there.

The page has its own Content-Security-Policy: scripts and styles from this service, plus the one
inline script that starts Swagger UI, allowed by its hash (it names the OpenAPI URL, which
depends on the proxy prefix, so the hash is taken of each page as rendered); requests ("Try it
out", the OpenAPI document) to this origin only."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/api/openapi.json"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


def docs_csp(page: str) -> str:
    """The policy of the rendered docs ``page``: its inline scripts allowed by their hashes."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'none'; script-src 'self'{hashes}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


@router.get(DOCS_PATH)
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")  # under a proxy's prefix too
    page = get_swagger_ui_html(
        openapi_url=root + OPENAPI_PATH,
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        oauth2_redirect_url=None,
    )
    page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body).decode("utf-8"))
    return page


@router.get("/api/docs")
async def old_docs(request: Request) -> RedirectResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(root + DOCS_PATH, status_code=308)


def mount_docs(app: FastAPI, paths: Mapping[str, dict[str, Any]]) -> None:
    """Serve the docs page and its assets (found in the installed package, at app creation);
    the OpenAPI document gets ``paths`` beside the router's (endpoints that answer below it)."""
    openapi = app.openapi

    def with_paths() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = openapi()  # made once, and kept by FastAPI as app.openapi_schema
            app.openapi_schema = {**schema, "paths": {**paths, **schema.get("paths", {})}}
        return app.openapi_schema

    app.openapi = with_paths  # type: ignore[method-assign]
    app.include_router(router)
    app.mount(
        ASSETS_PATH, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets"
    )
