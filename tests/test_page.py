"""The upload page's routes: ``GET /`` renders the page for this service's paths, its files are
served with their types, validators and nosniff, and nothing on it loads from anywhere else.

No database is needed (the page touches no service), so the app runs without its lifespan.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import make_settings
from upload_service.app import create_app
from upload_service.settings import ConfigError, load_settings
from upload_service.web.page import ASSET_TYPES, PAGE_TEMPLATE, STATIC_DIR, render_page

pytestmark = pytest.mark.anyio


def page_app(tmp_path: Path, **overrides: object) -> FastAPI:
    return create_app(make_settings(tmp_path, None, **overrides), settle_heap=False)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=page_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def attribute(page: str, name: str) -> str:
    match = re.search(rf'{name}="([^"]*)"', page)
    assert match is not None, f"no {name} in the page"
    return match[1]


async def test_the_page_is_served_at_the_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    page = response.text
    assert attribute(page, "data-endpoint") == "/files/"
    assert attribute(page, "data-api") == "/api"
    assert attribute(page, "data-chunk-size") == str(8 * 1024 * 1024)
    assert '<script type="module" src="/static/app.js"></script>' in page
    assert 'href="/static/page.css"' in page
    assert "{{" not in page


async def test_the_page_has_no_inline_script_and_loads_nothing_from_elsewhere() -> None:
    """CSP-friendly and usable without internet: every script is a file of ours, and no file
    names another origin to load from."""
    page = (STATIC_DIR / PAGE_TEMPLATE).read_text()
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert "src=" in tag, f"an inline script: {tag}"
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", page) is None
    assert " on" not in re.sub(r"\s+", " ", page).replace(" only", "")  # no onclick= etc.
    for name in (PAGE_TEMPLATE, *ASSET_TYPES):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), name
        assert not re.search(r"""import[^;]*from\s+["'](https?:)?//""", text), name
        assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", text), name


async def test_base_path_and_page_chunk_size_reach_the_page(tmp_path: Path) -> None:
    app = page_app(tmp_path, base_path="/uploads/tus", page_chunk_size=1024 * 1024)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        page = (await http.get("/")).text
    assert attribute(page, "data-endpoint") == "/uploads/tus/"
    assert attribute(page, "data-chunk-size") == str(1024 * 1024)


async def test_a_proxy_prefix_precedes_every_path_of_the_page(client: httpx.AsyncClient) -> None:
    # ASGITransport's client is 127.0.0.1, a trusted proxy by default
    response = await client.get("/", headers={"X-Forwarded-Prefix": "/media"})
    page = response.text
    assert attribute(page, "data-endpoint") == "/media/files/"
    assert attribute(page, "data-api") == "/media/api"
    assert 'src="/media/static/app.js"' in page
    assert (await client.get("/static/app.js", headers={"X-Forwarded-Prefix": "/media"})).is_success


def test_every_value_is_escaped_for_its_attribute() -> None:
    # the proxy layer already refuses such prefixes; the page does not rely on it
    page = render_page(
        '<main data-endpoint="{{endpoint}}" data-api="{{api}}">',
        root="/",
        endpoint='/a"b<c>/',
        api="/x&y",
        chunk_size=1,
    )
    assert page == '<main data-endpoint="/a&quot;b&lt;c&gt;/" data-api="/x&amp;y">'


@pytest.mark.parametrize(("name", "media_type"), sorted(ASSET_TYPES.items()))
async def test_assets_have_their_types_validators_and_nosniff(
    client: httpx.AsyncClient, name: str, media_type: str
) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert response.content == (STATIC_DIR / name).read_bytes()
    etag = response.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)

    again = await client.get(f"/static/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    changed = await client.get(f"/static/{name}", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200

    head = await client.head(f"/static/{name}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


@pytest.mark.parametrize(
    "path",
    ["/static/index.html", "/static/nope.js", "/static/..%2Fpage.py", "/static/../web/page.py"],
)
async def test_only_the_listed_assets_are_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert "page.py" not in response.text or "no such file" in response.text


async def test_the_page_is_not_in_the_api_docs(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/api/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/static") for path in paths)


def test_bad_page_chunk_size_stops_start_up(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_PAGE_CHUNK_SIZE", "1000")
    with pytest.raises(ConfigError, match="UPLOAD_PAGE_CHUNK_SIZE"):
        load_settings()


def test_base_path_cannot_take_the_pages_files(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_BASE_PATH", "/static")
    with pytest.raises(ConfigError, match="UPLOAD_BASE_PATH"):
        load_settings()


def test_the_readme_shows_the_screenshot() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert re.search(r"!\[[^\]]*\]\(docs/upload-page\.png\)", readme)
    assert (root / "docs" / "upload-page.png").read_bytes().startswith(b"\x89PNG")
    # the browser test writes its screenshot there, and it is not committed
    assert "/artifacts/" in (root / ".gitignore").read_text().split()
