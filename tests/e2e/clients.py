"""Third-party clients for the interop tests: the npm packages ``scripts/setup --test`` installs
into ``.cache/npm`` (pinned by ``tests/js/package-lock.json``), Node and Debian's Chromium, each
required as ``require_tool`` requires a program (skip with the reason; under ``CI=true``, fail)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.e2e.support import http_server, missing

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "tests" / "js"
NPM_PACKAGES = REPO / ".cache" / "npm"
CHROMIUM = Path("/usr/bin/chromium")


def npm_package(name: str) -> Path:
    """The installed npm package ``name`` (its directory under ``.cache/npm/node_modules``)."""
    path = NPM_PACKAGES / "node_modules" / name
    if not (path / "package.json").is_file():
        missing(f"npm package {name!r} is not installed in {NPM_PACKAGES} (scripts/setup --test)")
    return path


def chromium_path() -> str:
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} is not installed (Debian's chromium; scripts/setup --test)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("playwright for Python is not installed (the [test] extras)")
    return str(CHROMIUM)


class _StaticHandler(SimpleHTTPRequestHandler):
    routes: Mapping[str, tuple[bytes, str]] = {}

    def do_GET(self) -> None:
        found = self.routes.get(self.path.split("?", 1)[0])
        if found is None:
            self.send_error(404)
            return
        body, content_type = found
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def static_site(routes: Mapping[str, tuple[bytes, str]]) -> Iterator[str]:
    """A tiny HTTP server on 127.0.0.1 serving ``routes`` (path -> body, content type);
    yields its origin and stops it at the end."""
    handler = type("Handler", (_StaticHandler,), {"routes": dict(routes)})
    with http_server(handler, "static-site") as port:
        yield f"http://127.0.0.1:{port}"
