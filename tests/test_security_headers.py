"""Every answer carries ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy
(``SecurityHeadersMiddleware``): errors of every route and of the framework (404, 405, 400 for a
query that does not parse), answers other middleware make (a refused CORS preflight, the request
log's 500), and successes. Answers with a policy of their own (the upload page, the docs page,
downloads) keep it."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import create
from upload_service.app import create_app
from upload_service.auth.apikey import hash_key
from upload_service.ops.middleware import DEFAULT_CSP, SecurityHeadersMiddleware
from upload_service.services import Services
from upload_service.tus.protocol import TUS_ROUTES
from upload_service.web.page import PAGE_CSP

pytestmark = pytest.mark.anyio

API_KEY = "service-key-0123456789"
SIGNING_KEY = "a-signing-key-of-at-least-32-bytes!!"
ORIGIN = "https://app.example"
UNKNOWN = "f" * 32
# Headers a trusted proxy would send, malformed: the proxy middleware ignores them, never refuses.
BAD_PROXY_HEADERS = {
    "Forwarded": 'for="[::1";proto=gopher;host=@@',
    "X-Forwarded-For": "not an address",
    "X-Forwarded-Proto": "ftp",
    "X-Forwarded-Host": "bad host/",
    "X-Forwarded-Prefix": "../../etc",
}


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # a template: /files/{upload_id}
    methods: frozenset[str]


def routes_of(app: FastAPI) -> Iterator[Route]:
    """Every route of the app, included routers' routes among them, with its methods, and the
    tus endpoints, which answer in front of the router."""
    base_path = app.state.services.settings.server.base_path
    for template, methods in TUS_ROUTES:
        yield Route(base_path + template, frozenset(methods))
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes lists them all
        found: list[object] = list(app.routes)
    else:
        found = list(iter_route_contexts(app.routes))
    for route in found:
        original = getattr(route, "original_route", route)
        path = getattr(route, "path", None)
        assert isinstance(path, str), route
        if isinstance(original, Mount):
            yield Route(path + "/nothing-here.js", frozenset({"GET", "HEAD"}))
        else:
            yield Route(path, frozenset(getattr(route, "methods", None) or ()))


def concrete(template: str) -> str:
    """The template with every parameter an id nothing has."""
    return re.sub(r"\{[^}]+\}", UNKNOWN, template)


@pytest.fixture
async def secured(sqlite_dir: Path) -> AsyncIterator[FastAPI]:
    """Authentication on, metrics on, CORS for one origin only."""
    settings = make_settings(
        sqlite_dir,
        auth_api_keys=f"svc:{hash_key(API_KEY)}",
        auth_signing_key=SIGNING_KEY,
        cors_origins=(ORIGIN,),
        metrics=True,
    )
    app = create_app(settings, settle_heap=False)
    async with app.router.lifespan_context(app):
        yield app


def check(response: httpx.Response, seen: dict[str, int]) -> None:
    what = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    seen[what] = response.status_code
    assert response.headers.get_list("x-content-type-options") == ["nosniff"], what
    policies = response.headers.get_list("content-security-policy")
    assert len(policies) == 1, what
    if response.status_code >= 400:
        assert policies == [DEFAULT_CSP], what


async def test_every_answer_of_every_route_carries_nosniff_and_a_policy(
    secured: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = list(routes_of(secured))
    assert len(routes) >= 15, routes  # the walk sees the included routers' routes
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    seen: dict[str, int] = {}
    # the request log middleware answers an unexpected exception itself, before it propagates
    transport = httpx.ASGITransport(app=secured, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for route in routes:
            path = concrete(route.path)
            for method in sorted(route.methods):
                # anonymous: 401 where authentication is needed
                check(await client.request(method, path), seen)
                # authenticated, tus headers, an unknown id: 404 (or the route's own refusal)
                check(await client.request(method, path, headers={**TUS, **bearer}), seen)
                # bad headers: no Tus-Resumable, a length that is no number, a bad body type
                headers = {**bearer, "Upload-Length": "many", "Content-Type": "text/x-nope"}
                check(await client.request(method, path, headers=headers), seen)
                # a trusted-proxy-style request with malformed proxy headers
                check(await client.request(method, path, headers=BAD_PROXY_HEADERS), seen)
            # a method no route of this path has: 405
            check(await client.request("PUT", path, headers={**TUS, **bearer}), seen)
        # an unknown path: 404; a query that does not parse: 400 (the framework's validation)
        check(await client.get("/no/such/thing", headers=bearer), seen)
        check(await client.get("/api/uploads?created_after=yesterday", headers=bearer), seen)
        # a CORS preflight from an origin that is not allowed: refused by CORSMiddleware itself
        preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"}
        check(await client.options("/files/", headers=preflight), seen)
        # an unexpected exception: the 500 the request log middleware answers
        services: Services = secured.state.services

        async def broken() -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(services.repository, "ping", broken)
        check(await client.get("/readyz"), seen)
    statuses = set(seen.values())
    assert {400, 401, 404, 405, 412, 500} <= statuses, sorted(seen.items())
    assert any(what.startswith("OPTIONS /files/ -> 400") for what in seen), "the preflight"


async def test_an_answers_own_headers_are_kept() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-security-policy", b"sandbox"),
            (b"X-Content-Type-Options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    wrapped = SecurityHeadersMiddleware(app)
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/")
    assert response.headers.get_list("content-security-policy") == ["sandbox"]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]


@pytest.fixture
async def open_client(sqlite_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(sqlite_dir), settle_heap=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_the_upload_page_keeps_its_own_policy(open_client: httpx.AsyncClient) -> None:
    page = await open_client.get("/")
    assert page.headers.get_list("content-security-policy") == [PAGE_CSP]
    assert page.headers.get_list("x-content-type-options") == ["nosniff"]
    script = await open_client.get("/static/app.js")  # no policy of its own: the default
    assert script.headers.get_list("content-security-policy") == [DEFAULT_CSP]


async def test_downloads_keep_their_own_policy(open_client: httpx.AsyncClient) -> None:
    b64 = base64.b64encode
    plain = await create(
        open_client, 4, metadata=f"filetype {b64(b'text/html').decode()}", body=b"<b>!"
    )
    video = await create(
        open_client, 4, metadata=f"filetype {b64(b'video/mp4').decode()}", body=b"mp4!"
    )
    attachment = await open_client.get(f"/files/{plain}")
    assert attachment.status_code == 200, attachment.text
    assert attachment.headers.get_list("content-security-policy") == ["default-src 'none'; sandbox"]
    inline = await open_client.get(f"/files/{video}")
    assert inline.status_code == 200, inline.text
    assert inline.headers.get_list("content-security-policy") == ["sandbox"]
    for response in (attachment, inline):
        assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    etag = inline.headers["ETag"]
    unchanged = await open_client.get(f"/files/{video}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.headers.get_list("content-security-policy") == [DEFAULT_CSP]


def inline_script_hashes(page: str) -> list[str]:
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    ]


@pytest.mark.parametrize("root_path", ["", "/uploads"])
async def test_the_docs_page_allows_its_own_scripts_only(sqlite_dir: Path, root_path: str) -> None:
    app = create_app(make_settings(sqlite_dir), settle_heap=False)
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        page = await client.get(f"{root_path}/docs")
    assert page.status_code == 200
    [policy] = page.headers.get_list("content-security-policy")
    [script_hash] = inline_script_hashes(page.text)  # Swagger UI's start, naming the OpenAPI URL
    assert f"{root_path}/api/openapi.json" in page.text
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == f"'self' {script_hash}"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy
