"""The OpenAPI docs at ``/docs``: Swagger UI with its script, stylesheet and icon served by this
service (from the ``fastapi-offline`` package, which ships them), so the page works on a machine
without internet. ``/api/docs``, where the docs used to be, redirects there."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/api/openapi.json"

router = APIRouter(include_in_schema=False)


@router.get(DOCS_PATH)
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")  # under a proxy's prefix too
    return get_swagger_ui_html(
        openapi_url=root + OPENAPI_PATH,
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        oauth2_redirect_url=None,
    )


@router.get("/api/docs")
async def old_docs(request: Request) -> RedirectResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(root + DOCS_PATH, status_code=308)


def mount_docs(app: FastAPI) -> None:
    """Serve the docs page and its assets (found in the installed package, at app creation)."""
    app.include_router(router)
    app.mount(
        ASSETS_PATH, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets"
    )
