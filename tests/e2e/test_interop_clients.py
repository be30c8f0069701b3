"""Clients nobody here wrote, against a real server: tus-js-client in Node (5 MiB chunks, abort,
resume from its URL storage in a second process), Uppy (``@uppy/core`` + ``@uppy/tus``, the
``uppy`` bundle) in headless Chromium (upload, pause, resume), and tuspy resuming from its stored
URL after its process was killed. Each result's sha256 is checked against the server's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.clients import (
    JS_DIR,
    NPM_PACKAGES,
    REPO,
    chromium_path,
    npm_package,
    static_site,
)
from tests.e2e.support import (
    TUS,
    MiB,
    ServerProcess,
    Servers,
    head_offset,
    require_tool,
    sha256_file,
    write_random_file,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

SIZE = 48 * MiB + 4321  # ten 5 MiB chunks, the last one short


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    started = Servers(tmp_path)
    try:
        yield started.start()
    finally:
        started.stop_all()


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    write_random_file(path, SIZE)
    return path


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def server_status(base_url: str, url: str, timeout: float = 30.0) -> dict[str, Any]:
    """The upload's JSON status once it has left ``verifying``."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx.get(f"{base_url}/api/uploads/{upload_id(url)}").json()
        if status["state"] != "verifying" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def patch_sizes(server: ServerProcess, upload: str) -> list[int]:
    """Body sizes of the PATCH requests the server's access log shows for ``upload``."""
    sizes = []
    for line in server.log_text().splitlines():
        if f'"PATCH /files/{upload} HTTP' in line and " bytes in " in line:
            sizes.append(int(line.split('" ', 1)[1].split()[1]))
    return sizes


# -- tus-js-client (Node) -------------------------------------------------------------------------


def run_node(
    server: ServerProcess,
    video: Path,
    storage: Path,
    *args: str,
    protocol: str = "tus-v1",
    bearer: str | None = None,
    codes: tuple[int, ...] = (0, 3),
) -> tuple[int, list[Any]]:
    node = require_tool("node")
    npm_package("tus-js-client")
    result = subprocess.run(
        [
            node,
            str(JS_DIR / "tus_node_upload.mjs"),
            f"{server.base_url}/files/",
            str(video),
            str(storage),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={
            **os.environ,
            "NPM_PACKAGES": str(NPM_PACKAGES),
            "TUS_PROTOCOL": protocol,
            **({} if bearer is None else {"TUS_BEARER": bearer}),
        },
        check=False,
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode in codes, f"node failed: {result.stdout}\n{result.stderr}"
    return result.returncode, events


def test_tus_js_client_aborts_and_resumes_from_its_url_storage(
    server: ServerProcess, video: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "tus-url-storage.json"
    code, first = run_node(server, video, storage, "--abort-after", str(12 * MiB))
    assert code == 3, first
    url = next(event["url"] for event in first if event["event"] == "url")
    assert [event["event"] for event in first][-1] == "aborted"
    with httpx.Client() as client:
        offset = head_offset(client, url)
    assert 0 < offset < SIZE

    code, second = run_node(server, video, storage)  # a new process: URL from the storage file
    assert code == 0, second
    kinds = [event["event"] for event in second]
    assert kinds[0] == "resuming", second
    assert kinds[-1] == "done", second
    assert second[0]["url"] == url  # the same upload, resumed
    assert second[-1]["url"] == url
    status = server_status(server.base_url, url)
    assert status["state"] == "ready"
    assert status["sha256"] == sha256_file(video)
    assert status["metadata"] == {"filename": video.name, "filetype": "video/mp4"}
    sizes = patch_sizes(server, upload_id(url))
    assert max(sizes) <= 5 * MiB  # chunkSize: 5 MiB, every PATCH
    assert sum(sizes) == SIZE  # what the aborted PATCH delivered was kept, nothing sent twice


def test_tus_js_client_with_only_a_ticket_uploads_resumes_and_gets_no_second_upload(
    server: ServerProcess, video: Path, tmp_path: Path
) -> None:
    """An end user holding nothing but a one-use upload ticket: tus-js-client uploads with it,
    aborts, resumes in a new process; the upload is the issuer's and names the ticket; a second
    upload with the ticket is refused (403), and the listing stays closed to it."""
    issued = httpx.post(f"{server.base_url}/api/tickets", json={"uploads": 1})
    assert issued.status_code == 201, issued.text
    ticket = issued.json()
    storage = tmp_path / "tus-url-storage.json"
    bearer = ticket["ticket"]
    code, first = run_node(server, video, storage, "--abort-after", str(12 * MiB), bearer=bearer)
    assert code == 3, first
    url = next(event["url"] for event in first if event["event"] == "url")
    code, second = run_node(server, video, storage, bearer=bearer)
    assert code == 0, second
    assert next(event["event"] for event in second) == "resuming"
    assert second[-1] == {"event": "done", "url": url}
    status = server_status(server.base_url, url)
    assert (status["state"], status["ticket"]) == ("ready", ticket["id"])
    assert status["sha256"] == sha256_file(video)
    assert sum(patch_sizes(server, upload_id(url))) == SIZE  # nothing sent twice

    other = tmp_path / "other.mp4"
    write_random_file(other, MiB)
    code, refused = run_node(
        server, other, tmp_path / "other-storage.json", bearer=bearer, codes=(1,)
    )
    assert refused[-1]["event"] == "error"
    assert "403" in refused[-1]["message"], refused
    assert "has created every upload it may" in refused[-1]["message"], refused
    listing = httpx.get(
        f"{server.base_url}/api/uploads", headers={"Authorization": f"Bearer {bearer}"}
    )
    assert listing.status_code == 403
    shown = httpx.get(f"{server.base_url}/api/tickets/{ticket['id']}").json()
    assert (shown["used"], shown["upload_ids"]) == (1, [upload_id(url)])


@pytest.mark.parametrize(("protocol", "version"), [("ietf-draft-03", 5), ("ietf-draft-05", 6)])
def test_tus_js_client_speaks_the_ietf_draft_aborts_and_resumes(
    server: ServerProcess, video: Path, tmp_path: Path, protocol: str, version: int
) -> None:
    """tus-js-client with ``protocol`` (IETF draft interop version ``version``): it uploads,
    aborts at about 40 %, resumes from its stored URL in a new process, and the upload is
    byte-identical, verified and listed like any other."""
    storage = tmp_path / "tus-url-storage.json"
    at = int(SIZE * 0.4)
    code, first = run_node(server, video, storage, "--abort-after", str(at), protocol=protocol)
    assert code == 3, first
    url = next(event["url"] for event in first if event["event"] == "url")
    head = httpx.head(url, headers={"Upload-Draft-Interop-Version": str(version)})
    assert head.status_code == 204, head.text
    assert head.headers["upload-complete"] == "?0"
    assert 0 < int(head.headers["upload-offset"]) < SIZE

    code, second = run_node(server, video, storage, protocol=protocol)
    assert code == 0, second
    assert second[0]["event"] == "resuming", second
    assert second[-1] == {"event": "done", "url": url}
    status = server_status(server.base_url, url)
    assert status["state"] == "ready"
    assert status["sha256"] == sha256_file(video)
    assert status["metadata"] == {"filename": video.name, "filetype": "video/mp4"}
    assert sum(patch_sizes(server, upload_id(url))) == SIZE  # nothing sent twice


# -- tuspy with store_url -------------------------------------------------------------------------

TUSPY = """
import sys
from tusclient.client import TusClient
from tusclient.storage.filestorage import FileStorage

endpoint, path, store = sys.argv[1:4]
uploader = TusClient(endpoint).uploader(
    path, chunk_size=1024 * 1024, store_url=True, url_storage=FileStorage(store),
    metadata={"filename": "clip.mp4"},
)
resumed = uploader.url is not None  # found in the store by the file's fingerprint
if not resumed:
    uploader.set_url(uploader.create_url())  # what upload() does first, made visible here
print("url", uploader.url, "offset", uploader.offset, "resumed", resumed, flush=True)
uploader.upload()
print("done", uploader.url, flush=True)
"""


def test_tuspy_resumes_from_its_stored_url_after_being_killed(
    server: ServerProcess, video: Path, tmp_path: Path
) -> None:
    store = tmp_path / "tuspy-urls.json"
    argv = [sys.executable, "-c", TUSPY, f"{server.base_url}/files/", str(video), str(store)]
    killed = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert killed.stdout is not None
        first = killed.stdout.readline().split()  # url <url> offset 0 resumed False
        killed.stdout.close()
        url = first[1]
        with httpx.Client() as client:
            deadline = time.monotonic() + 60
            while head_offset(client, url) < 5 * MiB and time.monotonic() < deadline:
                time.sleep(0.02)
        os.kill(killed.pid, signal.SIGKILL)  # mid-upload, with no chance to clean up
    finally:
        killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    with httpx.Client() as client:
        offset = head_offset(client, url)
    assert 0 < offset < SIZE

    resumed = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert resumed.returncode == 0, resumed.stderr
    lines = [line.split() for line in resumed.stdout.splitlines()]
    assert lines[0][:2] == ["url", url]  # found by the file's fingerprint in the store
    assert lines[0][4:] == ["resumed", "True"]
    assert int(lines[0][3]) >= offset  # and resumed from the server's offset, not from 0
    assert lines[-1] == ["done", url]
    status = server_status(server.base_url, url)
    assert status["state"] == "ready"
    assert status["sha256"] == sha256_file(video)


# -- Uppy in Chromium -----------------------------------------------------------------------------

UPPY_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Uppy interop</title>
<input type="file" id="picker">
<script type="module">
import { Uppy, Tus } from '/uppy.min.mjs'

const uppy = new Uppy({ autoProceed: false })
uppy.use(Tus, { endpoint: ENDPOINT, chunkSize: 5 * 1024 * 1024, retryDelays: [0, 250, 500, 1000] })
const state = { pauseAt: null, pausedAt: null, progress: 0, events: [] }
window.uppy = uppy
window.state = state
uppy.on('upload-progress', (file, progress) => {
  state.progress = progress.bytesUploaded
  if (state.pauseAt !== null && state.pausedAt === null && progress.bytesUploaded >= state.pauseAt) {
    state.pausedAt = progress.bytesUploaded
    uppy.pauseResume(file.id)
    state.events.push({ event: 'paused', file: file.id })
  }
})
uppy.on('upload-success', (file, response) => {
  state.events.push({ event: 'success', url: response.uploadURL })
})
uppy.on('upload-error', (file, error) => state.events.push({ event: 'error', message: String(error) }))
document.getElementById('picker').addEventListener('change', (change) => {
  for (const file of change.target.files) {
    uppy.addFile({ name: file.name, type: file.type, data: file, source: 'picker' })
  }
  state.events.push({ event: 'added', count: uppy.getFiles().length })
})
window.ready = true
</script>
"""


@contextmanager
def picker_page(
    page_html: str, script: tuple[str, Path], video: Path
) -> Iterator[tuple[Page, list[str]]]:
    """``page_html`` (with ``script``, a path and the bundle it serves) on a static origin of its
    own, open in headless Chromium once it says ``window.ready``, with ``video`` chosen in its
    ``#picker``: the page, and the errors it raises (each test asserts there are none)."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    routes = {
        "/": (page_html.encode(), "text/html; charset=utf-8"),
        script[0]: (script[1].read_bytes(), "text/javascript"),
    }
    with static_site(routes) as origin, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(origin + "/")
            page.wait_for_function("window.ready === true", timeout=30_000)
            page.set_input_files("#picker", str(video))
            yield page, errors
        finally:
            browser.close()


def test_uppy_in_chromium_uploads_pauses_and_resumes(server: ServerProcess, video: Path) -> None:
    bundle = npm_package("uppy") / "dist" / "uppy.min.mjs"
    page_html = UPPY_PAGE.replace("ENDPOINT", json.dumps(f"{server.base_url}/files/"))
    with picker_page(page_html, ("/uppy.min.mjs", bundle), video) as (page, errors):
        page.wait_for_function("window.state.events.length > 0")
        page.evaluate(f"window.state.pauseAt = {12 * MiB}")
        page.evaluate("() => { window.uppy.upload() }")  # resolves when done: not awaited
        page.wait_for_function("window.state.pausedAt !== null", timeout=120_000)

        url = page.evaluate("window.uppy.getFiles()[0].tus.uploadUrl")
        assert str(url).startswith(f"{server.base_url}/files/")
        with httpx.Client() as client:
            time.sleep(1.0)  # the paused request is aborted; the server keeps what came
            paused = head_offset(client, url)
            time.sleep(1.0)
            assert head_offset(client, url) == paused  # paused means nothing is sent
        assert 0 < paused < SIZE
        assert page.evaluate("window.uppy.getFiles()[0].isPaused") is True

        page.evaluate("() => { window.uppy.pauseResume(window.uppy.getFiles()[0].id) }")
        page.wait_for_function(
            "window.state.events.some(e => e.event === 'success' || e.event === 'error')",
            timeout=120_000,
        )
        events = page.evaluate("window.state.events")
        assert errors == []
    assert events[-1] == {"event": "success", "url": url}, events
    status = server_status(server.base_url, url)
    assert status["state"] == "ready"
    assert status["sha256"] == sha256_file(video)
    assert status["metadata"]["filename"] == video.name
    assert httpx.head(url, headers=TUS).headers["Upload-Offset"] == str(SIZE)
    assert sum(patch_sizes(server, upload_id(url))) == SIZE


TUS_JS_PAGE = """<!doctype html>
<meta charset="utf-8">
<input type="file" id="picker">
<script src="/tus.min.js"></script>
<script>
const state = { events: [], url: null }
window.state = state
function upload(file, options) {
  return new tus.Upload(file, {
    endpoint: ENDPOINT,
    protocol: PROTOCOL,
    chunkSize: 5 * 1024 * 1024,
    retryDelays: [0, 250, 500, 1000],
    metadata: { filename: file.name, filetype: 'video/mp4' },
    onUploadUrlAvailable() { state.url = this.url },
    onError(error) { state.events.push({ event: 'error', message: String(error) }) },
    ...options,
  })
}
window.abortAt = (fraction) => {
  const file = document.getElementById('picker').files[0]
  let aborting = false
  const first = upload(file, {
    onProgress(sent, total) {
      if (!aborting && sent >= total * fraction) {
        aborting = true
        first.abort().then(() => state.events.push({ event: 'aborted', url: first.url, sent }))
      }
    },
    onSuccess() { state.events.push({ event: 'done-too-early' }) },
  })
  first.start()
}
window.resume = (url) => {
  const file = document.getElementById('picker').files[0]
  const second = upload(file, {
    uploadUrl: url,
    onSuccess() { state.events.push({ event: 'done', url: second.url }) },
  })
  second.start()
}
window.ready = true
</script>
"""


@pytest.mark.parametrize(("protocol", "version"), [("ietf-draft-03", 5), ("ietf-draft-05", 6)])
def test_tus_js_client_in_chromium_speaks_the_ietf_draft_aborts_and_resumes(
    server: ServerProcess, video: Path, protocol: str, version: int
) -> None:
    """tus-js-client's browser bundle in headless Chromium, cross-origin, with ``protocol``: it
    uploads, aborts at about 40 %, resumes from the upload's URL, and the upload is intact."""
    bundle = npm_package("tus-js-client") / "dist" / "tus.min.js"
    page_html = TUS_JS_PAGE.replace("ENDPOINT", json.dumps(f"{server.base_url}/files/"))
    page_html = page_html.replace("PROTOCOL", json.dumps(protocol))
    with picker_page(page_html, ("/tus.min.js", bundle), video) as (page, errors):
        page.evaluate("window.abortAt(0.4)")
        page.wait_for_function("window.state.events.length > 0", timeout=120_000)
        aborted = page.evaluate("window.state.events[0]")
        assert aborted["event"] == "aborted", aborted
        url = aborted["url"]
        time.sleep(0.5)  # the aborted request is cut; the server keeps what came
        head = httpx.head(url, headers={"Upload-Draft-Interop-Version": str(version)})
        assert head.status_code == 204, head.text
        assert head.headers["upload-complete"] == "?0"
        assert 0 < int(head.headers["upload-offset"]) < SIZE

        page.evaluate(f"window.resume({json.dumps(url)})")
        page.wait_for_function("window.state.events.length > 1", timeout=120_000)
        events = page.evaluate("window.state.events")
        assert errors == []
    assert events[-1] == {"event": "done", "url": url}, events
    status = server_status(server.base_url, url)
    assert status["state"] == "ready"
    assert status["sha256"] == sha256_file(video)
    assert status["metadata"] == {"filename": video.name, "filetype": "video/mp4"}
    assert sum(patch_sizes(server, upload_id(url))) == SIZE
