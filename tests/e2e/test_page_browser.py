"""The upload page in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real ``upload-service serve`` process on a loopback port.

Uploads are slowed down with Chromium's own network throttling (DevTools
``Network.emulateNetworkConditions``), so that pausing and reloading happen mid-upload because the
test waits for a progress condition on the page, never because it slept long enough; nothing
here asserts on speed. The page marks each upload's row with ``data-state``, ``data-bytes``,
``data-url``, ``data-resumed-from`` and ``data-server-state`` for the test to wait on.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import jwt
import pytest

from tests.e2e.clients import chromium_path, static_site
from tests.e2e.support import (
    MiB,
    Servers,
    Source,
    download_sha256,
    head_offset,
    require_tool,
    upload_id_of,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Request, Route

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
SECRET = "page-test-secret-of-at-least-32-bytes!"
UPLOAD_RATE = 24 * MiB  # bytes/s the browser may send: the big upload takes several seconds
ROW = "li.upload"


@pytest.fixture
def server_database() -> dict[str, str]:
    """The page does not care which database the service runs on (the other end-to-end tests
    run both): the embedded default only."""
    return {}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()  # and playwright importable, or skip/fail
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=[*args, "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    created = browser.new_context(viewport={"width": 1000, "height": 720})
    created.set_default_timeout(60_000)
    try:
        yield created
    finally:
        created.close()


def throttle(context: BrowserContext, page: Page, upload_rate: float = UPLOAD_RATE) -> None:
    """Chromium sends at most ``upload_rate`` bytes/s from this page (DevTools throttling)."""
    session = context.new_cdp_session(page)
    session.send("Network.enable")
    session.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": upload_rate,
        },
    )


@dataclass
class Patches:
    """Every PATCH the page sent: (upload URL, Upload-Offset), and where in that list each load
    of the page (its document request) came.

    Playwright hands request events to the test only while the test waits on the browser, so a
    PATCH the old page sent just before a reload can be recorded after the test asked for
    ``len(sent)``; Chromium reports a page's requests in the order it sends them, so the reload's
    own document request is the boundary between the old page's PATCHes and the new page's.
    """

    sent: list[tuple[str, int]] = field(default_factory=list)
    loads: list[int] = field(default_factory=list)

    def record(self, request: Request) -> None:
        if request.method == "PATCH":
            self.sent.append((request.url, int(request.headers["upload-offset"])))
        elif request.is_navigation_request() and request.resource_type == "document":
            self.loads.append(len(self.sent))

    def since_last_load(self) -> list[tuple[str, int]]:
        """The PATCHes of the page as last loaded."""
        return self.sent[self.loads[-1] :]


def row_data(page: Page, name: str) -> str | None:
    value: str | None = page.eval_on_selector(ROW, f"row => row.dataset.{name} ?? null")
    return value


def wait_for_bytes(page: Page, at_least: int) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('{ROW}')?.dataset.bytes) >= {at_least}"
    )


def wait_for_state(page: Page, state: str, selector: str = ROW, timeout: float = 60_000) -> None:
    page.wait_for_function(
        "([selector, state]) => document.querySelector(selector)?.dataset.state === state",
        arg=[selector, state],
        timeout=timeout,
    )


def wait_for_server_state(page: Page, state: str, timeout: float = 180_000) -> None:
    page.wait_for_function(
        f"state => document.querySelector('{ROW}')?.dataset.serverState === state",
        arg=state,
        timeout=timeout,
    )


def save_screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_a_large_upload_pauses_resumes_survives_a_reload_and_arrives_intact(
    servers: Servers, context: BrowserContext, source: Source, http: httpx.Client
) -> None:
    assert source.size >= 100 * MiB
    server = servers.start(env={"UPLOAD_PAGE_CHUNK_SIZE": str(8 * MiB)})
    page = context.new_page()
    patches = Patches()
    page.on("request", patches.record)
    throttle(context, page)
    page.goto(f"{server.base_url}/")
    page.locator("#file-input").set_input_files(source.path)

    # pause mid-upload: the page stops sending, the server keeps what arrived
    wait_for_bytes(page, 40 * MiB)
    page.get_by_role("button", name=f"Pause {source.path.name}").click()
    wait_for_state(page, "paused")
    url = row_data(page, "url")
    assert url is not None
    paused_at = head_offset(http, url)
    assert 0 < paused_at < source.size
    assert page.get_by_role("button", name=f"Resume {source.path.name}").is_visible()

    # resume: from the server's offset, on the same upload
    sent_before_resume = len(patches.sent)
    page.get_by_role("button", name=f"Resume {source.path.name}").click()
    wait_for_bytes(page, paused_at + 24 * MiB)
    resumed = patches.sent[sent_before_resume:]
    assert resumed, "no PATCH after resume"
    assert resumed[0][1] > 0, f"resumed from offset {resumed[0][1]}"
    page.wait_for_function(
        f"() => document.querySelector('{ROW} .stats').textContent.includes('left')"
    )
    shot = save_screenshot(page, "upload-page.png")
    assert shot.stat().st_size > 0

    # reload mid-upload: the page forgets everything but localStorage
    wait_for_bytes(page, 120 * MiB)
    before_reload = head_offset(http, url)
    assert before_reload > paused_at
    loads_before_reload = len(patches.loads)
    page.reload()
    throttle(context, page)
    unfinished = page.locator(".unfinished-section")
    unfinished.wait_for(state="visible")
    assert source.path.name in unfinished.inner_text()
    page.locator("#file-input").set_input_files(source.path)
    wait_for_state(page, "done", timeout=180_000)
    wait_for_server_state(page, "ready")

    assert len(patches.loads) == loads_before_reload + 1, "the reload was not seen"
    after_reload = patches.since_last_load()
    assert after_reload, "no PATCH after the reload"
    assert after_reload[0][1] >= before_reload, "the upload restarted below the server's offset"
    resumed_from = row_data(page, "resumedFrom")
    assert resumed_from is not None
    assert int(resumed_from) >= before_reload
    assert row_data(page, "url") == url, "a new upload was created after the reload"
    assert {sent_url for sent_url, _ in patches.sent} == {url}
    at_zero = [offset for _, offset in patches.sent if offset == 0]
    assert at_zero == [0], f"{len(at_zero)} PATCHes at offset 0: the upload restarted"
    assert head_offset(http, url) == source.size

    # what the server says about it, on the page and through the API
    shown = page.locator(f"{ROW} code.sha256").inner_text()
    assert shown == source.sha256
    assert download_sha256(http, url) == (source.sha256, source.size)
    assert page.evaluate("() => Object.keys(localStorage).length") == 0  # nothing left to resume


def test_refusals_are_explained(
    servers: Servers, context: BrowserContext, tmp_path: Path, http: httpx.Client
) -> None:
    server = servers.start(env={"UPLOAD_MAX_SIZE": str(MiB), "UPLOAD_ALLOWED_TYPES": "video/*"})
    too_large = tmp_path / "too-large.mp4"
    too_large.write_bytes(os.urandom(2 * MiB))
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    fake = tmp_path / "fake.mp4"  # declared video/mp4 by its name, but its bytes are no video
    fake.write_bytes(os.urandom(64 * 1024))
    page = context.new_page()
    page.goto(f"{server.base_url}/")
    page.locator("#file-input").set_input_files([too_large, text, fake])

    rows = {path.name: page.locator(ROW, has_text=path.name) for path in (too_large, text, fake)}
    for row in rows.values():
        row.and_(page.locator("[data-state=error]")).wait_for()
    assert "too large" in rows[too_large.name].locator(".status").inner_text()
    assert "not allowed" in rows[text.name].locator(".status").inner_text()
    assert "not allowed" in rows[fake.name].locator(".status").inner_text()
    # the refused file's upload (created, then refused by its first bytes) is deleted by the page
    url = rows[fake.name].get_attribute("data-url")
    assert url is not None
    deadline = time.monotonic() + 30
    while http.head(url, headers={"Tus-Resumable": "1.0.0"}).status_code != 410:
        assert time.monotonic() < deadline, "the refused upload was not deleted"
        time.sleep(0.1)
    # a person is told about it where assistive technology reads it too
    assert page.locator("[aria-live=polite]").count() == 1


def make_video(path: Path) -> None:
    ffmpeg = require_tool("ffmpeg")
    subprocess.run(
        [
            ffmpeg,
            *("-loglevel", "error", "-y", "-f", "lavfi"),
            *("-i", "testsrc=duration=4:size=320x240:rate=25"),
            *("-c:v", "libvpx", "-b:v", "300k", str(path)),
        ],
        check=True,
        timeout=120,
    )


def test_with_a_token_from_the_fragment_a_video_uploads_and_plays_through_its_signed_url(
    servers: Servers, context: BrowserContext, tmp_path: Path, http: httpx.Client
) -> None:
    video = tmp_path / "clip.webm"
    make_video(video)
    server = servers.start(env={"UPLOAD_AUTH_JWT_SECRET": SECRET})
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")

    # without a token: the service says who may not, and the page says so
    anonymous = context.new_page()
    anonymous.goto(f"{server.base_url}/")
    anonymous.locator("#file-input").set_input_files(video)
    wait_for_state(anonymous, "error")
    assert "Not signed in" in anonymous.locator(f"{ROW} .status").inner_text()
    anonymous.close()

    page = context.new_page()
    page.goto(f"{server.base_url}/#token={token}")
    page.wait_for_function("() => !location.hash.includes('token')")
    assert token not in page.url
    page.reload()  # the token outlives a reload (sessionStorage), not the tab
    page.locator("#file-input").set_input_files(video)
    wait_for_server_state(page, "ready")
    expected = hashlib.sha256(video.read_bytes()).hexdigest()
    assert page.locator(f"{ROW} code.sha256").inner_text() == expected

    player = page.locator(f"{ROW} video")
    src = player.get_attribute("src")
    assert src is not None
    assert "signature=" in src
    assert token not in src
    # the player reads the file through the signed URL, with Range requests, and seeks
    page.wait_for_function(f"() => document.querySelector('{ROW} video').readyState >= 1")
    duration = page.eval_on_selector(f"{ROW} video", "v => v.duration")
    assert duration == pytest.approx(4, abs=0.5)
    page.eval_on_selector(
        f"{ROW} video",
        """v => new Promise(done => { v.addEventListener('seeked', done, {once: true});
                                     v.currentTime = 3; })""",
    )
    assert http.get(src).status_code == 200  # no token needed, while it lasts
    # the upload is alice's: without the token the API does not show it
    upload_id = upload_id_of(src.split("?", 1)[0])
    assert http.get(f"{server.base_url}/api/uploads/{upload_id}").status_code == 401
    assert token not in server.log_text(), "the token was logged"


EMBEDDING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>An application that embeds the page</title>
<link rel="stylesheet" href="{service}/static/page.css">
<script>
  window.UPLOAD_SERVICE = {{
    endpoint: "{service}/files/",
    api: "{service}/api",
    chunkSize: {chunk_size},
    token: () => Promise.resolve("{token}"),
  }};
</script>
<script type="module" src="{service}/static/app.js"></script>
</head><body><main id="upload-app"></main></body></html>
"""


def embedding_application(html: str) -> AbstractContextManager[str]:
    """Another origin (a port of its own on 127.0.0.1) serving ``html`` at ``/app.html``; yields
    its origin. (Loopback, as the service: Chromium lets a page reach a loopback address only
    from loopback, or with the user's permission.)"""
    return static_site({"/app.html": (html.encode(), "text/html; charset=utf-8")})


def test_an_application_on_another_origin_embeds_the_page_with_its_token(
    servers: Servers, context: BrowserContext, tmp_path: Path, http: httpx.Client
) -> None:
    """``window.UPLOAD_SERVICE`` on the embedding application's own page, on another origin (so
    the service's CORS answers are exercised too): its token (a function), chunk size and
    endpoint are used."""
    server = servers.start(env={"UPLOAD_AUTH_JWT_SECRET": SECRET})
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    html = EMBEDDING_PAGE.format(service=server.base_url, chunk_size=MiB, token=token)
    path = tmp_path / "report.bin"
    path.write_bytes(os.urandom(3 * MiB + 1234))
    page = context.new_page()
    patches = Patches()
    page.on("request", patches.record)
    with embedding_application(html) as origin:
        page.goto(f"{origin}/app.html")
        page.locator("#file-input").set_input_files(path)
        wait_for_server_state(page, "ready")
    assert [offset for _, offset in patches.sent] == [0, MiB, 2 * MiB, 3 * MiB]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert page.locator(f"{ROW} code.sha256").inner_text() == expected
    url = row_data(page, "url")
    assert url is not None
    assert url.startswith(f"{server.base_url}/files/")
    status = http.get(
        f"{server.base_url}/api/uploads/{upload_id_of(url)}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status.json()["owner"] == "jwt::bob"  # a token without iss


def test_network_errors_and_busy_answers_are_retried_from_the_servers_offset(
    servers: Servers, context: BrowserContext, tmp_path: Path, http: httpx.Client
) -> None:
    """The second, third, fourth and fifth PATCH meet a reset connection, a 503 with
    Retry-After, a 423 and a 409: the page waits, asks the server for its offset (HEAD) each
    time, goes on, and the file arrives whole."""
    server = servers.start(env={"UPLOAD_PAGE_CHUNK_SIZE": str(MiB)})
    path = tmp_path / "flaky.bin"
    path.write_bytes(os.urandom(4 * MiB + 99))
    page = context.new_page()
    seen: list[str] = []
    tus = {"Tus-Resumable": "1.0.0"}
    failures: Iterator[Callable[[Route], None]] = iter(
        [
            lambda route: route.abort("connectionreset"),
            lambda route: route.fulfill(status=503, headers={**tus, "Retry-After": "1"}),
            lambda route: route.fulfill(status=423, headers=tus, body="upload is busy\n"),
            lambda route: route.fulfill(status=409, headers=tus, body="offset mismatch\n"),
        ]
    )

    def handle(route: Route) -> None:
        request = route.request
        seen.append(f"{request.method} {request.headers.get('upload-offset', '')}".strip())
        if request.method == "PATCH" and len([s for s in seen if s.startswith("PATCH")]) >= 2:
            failure = next(failures, None)
            if failure is not None:
                seen[-1] += " (failed)"
                failure(route)
                return
        route.continue_()

    page.route(f"{server.base_url}/files/*", handle)
    page.goto(f"{server.base_url}/")
    page.locator("#file-input").set_input_files(path)
    wait_for_server_state(page, "ready")
    failed = [index for index, entry in enumerate(seen) if entry.endswith("(failed)")]
    assert len(failed) == 4, seen
    for index in failed:  # after each failure the page re-read the offset before sending again
        assert seen[index + 1] == "HEAD", seen
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    url = row_data(page, "url")
    assert url is not None
    assert download_sha256(http, url) == (expected, path.stat().st_size)


def test_two_tabs_on_one_file_one_yields_and_the_other_goes_on(
    servers: Servers, context: BrowserContext, source: Source, http: httpx.Client
) -> None:
    server = servers.start(env={"UPLOAD_PAGE_CHUNK_SIZE": str(8 * MiB)})
    first, second = context.new_page(), context.new_page()
    second_patches = Patches()
    second.on("request", second_patches.record)
    for page in (first, second):
        throttle(context, page)
        page.goto(f"{server.base_url}/")
    first.locator("#file-input").set_input_files(source.path)
    wait_for_bytes(first, 8 * MiB)

    # the second tab, given the same file, yields to the first: paused, saying why
    second.locator("#file-input").set_input_files(source.path)
    wait_for_state(second, "paused")
    assert "Another tab" in second.locator(f"{ROW} .status").inner_text()
    assert row_data(first, "state") == "uploading"
    url = row_data(first, "url")
    assert url is not None
    assert second_patches.sent == []

    # the first tab is closed mid-upload: the second one resumes the same upload and ends it
    first.close()
    second.get_by_role("button", name=f"Resume {source.path.name}").click()
    wait_for_state(second, "done", timeout=180_000)
    wait_for_server_state(second, "ready")
    assert row_data(second, "url") == url
    assert {sent_url for sent_url, _ in second_patches.sent} == {url}
    assert second_patches.sent[0][1] > 0, "the second tab started over"
    assert download_sha256(http, url) == (source.sha256, source.size)
