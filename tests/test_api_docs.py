"""The OpenAPI docs at ``/docs`` load everything from this service: no external URL in the page,
and each asset it names is served; ``/api/docs`` redirects there; every JSON endpoint declares
its response model; the tus endpoints are in the OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.conftest import make_settings
from upload_service.app import create_app
from upload_service.tus.protocol import TUS_ROUTES

pytestmark = pytest.mark.anyio

JSON_ROUTES = (
    ("/api/uploads", "get"),
    ("/api/uploads/{upload_id}", "get"),
    ("/api/uploads/{upload_id}/deliveries", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
)


async def test_the_docs_page_and_its_assets_load_without_the_internet(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html) is None, "an external URL"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    assert "/docs/assets/swagger-ui.css" in assets
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 0
    assert "'/api/openapi.json'" in html or '"/api/openapi.json"' in html
    script = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in script.text
    assert (await client.get("/docs/assets/nope.js")).status_code == 404


async def test_the_old_docs_address_redirects(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/docs")
    assert response.status_code == 308
    assert response.headers["location"] == "/docs"


async def test_every_json_endpoint_has_a_response_model(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/api/openapi.json")).json()
    for path, method in JSON_ROUTES:
        content = spec["paths"][path][method]["responses"]["200"]["content"]
        assert "$ref" in str(content["application/json"]["schema"]), path
    events = spec["paths"]["/api/uploads/{upload_id}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
    assert "/docs" not in spec["paths"]


async def test_the_tus_endpoints_are_in_the_openapi_document(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """They answer below FastAPI's router, so the document gets them from ``TUS_ROUTES``: every
    method that ``TusEndpoints`` answers, under the configured base path, in a valid document."""
    spec = (await client.get("/api/openapi.json")).json()
    validate(spec)
    for template, methods in TUS_ROUTES:
        item = spec["paths"]["/files" + template]
        assert sorted(item) == sorted(m.lower() for m in methods), template
        for operation in item.values():
            assert operation["summary"], template
            assert operation["responses"], template
    assert spec["paths"]["/files/{upload_id}"]["patch"]["responses"]["204"]
    assert spec["paths"]["/files/{upload_id}"]["patch"]["responses"]["409"]
    assert "/api/uploads" in spec["paths"]

    other = create_app(make_settings(tmp_path, base_path="/media/tus"), settle_heap=False)
    paths = other.openapi()["paths"]
    assert "/media/tus/" in paths
    assert "/media/tus/{upload_id}" in paths
    assert not any(path.startswith("/files") for path in paths)
