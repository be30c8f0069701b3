"""The browser half of the direct-to-S3 test: Uppy 6 with ``@uppy/aws-s3`` in ``companionEndpoint``
mode and ``@uppy/golden-retriever``, in headless Chromium, uploading files and surviving a page
reload half-way through a multipart upload.

``uppy_s3_site()`` serves the page and the ``uppy`` bundle on an origin of its own (the origin the
bucket's CORS rule, see ``tests.s3.allow_browser_uploads``, and the service's CORS must allow).
``upload_with_reload()`` drives it: picks the files, starts the upload, reloads the page once the
big file has sent enough, gives Golden Retriever back what it could not keep, resumes, and waits
for every file to succeed or fail. What it returns (``UploadRun``) says what the page did before
and after the reload, so a test can check that the big upload resumed rather than restarted.

How Golden Retriever (6.0.0) restores, as read from its source and seen here:

- It saves the files' Uppy state (including ``s3Multipart: {uploadId, key}``, which the AwsS3
  plugin sets after ``POST /s3/multipart``) and ``currentUploads`` in IndexedDB (Uppy 5's 5.2:
  in localStorage), throttled to every 500 ms.
- It keeps a file's bytes in IndexedDB only up to ``indexedDB.maxFileSize`` (10 MiB by default;
  300 MiB in all by ``maxTotalSize``). A larger file comes back after the reload as a *ghost*
  (``isGhost``, no data): picking the same file again (same name, type, size and mtime, so the same
  Uppy id) re-attaches its bytes and keeps its state, ``s3Multipart`` included.
- Nothing resumes by itself: without the Dashboard, the page has to emit ``restore-confirmed``,
  which resumes and re-runs the saved uploads. The plugin then asks ``GET /s3/multipart/{uploadId}``
  for the parts S3 has and sends only the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.e2e.clients import chromium_path, npm_package, static_site

if TYPE_CHECKING:
    from playwright.sync_api import Page

MiB = 1024 * 1024

# A classic script runs before the module one: it wraps XMLHttpRequest (the bytes to S3) and fetch
# (the Companion endpoints) so that every request the page makes is reported with its status.
UPPY_S3_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Uppy to S3</title>
<input type="file" id="picker" multiple>
<script>
{
const load = Number(sessionStorage.getItem('load') ?? '-1') + 1
sessionStorage.setItem('load', String(load))
window.state = { load, events: [], requests: [], progress: {}, restored: false }
window.note = (kind, entry) => {
  window.state[kind].push(entry)
  if (window.report) window.report({ kind, load, ...entry })
}
const open = XMLHttpRequest.prototype.open
XMLHttpRequest.prototype.open = function (method, url, ...rest) {
  this.seen = { method: String(method).toUpperCase(), url: String(url) }
  return open.call(this, method, url, ...rest)
}
const send = XMLHttpRequest.prototype.send
XMLHttpRequest.prototype.send = function (body) {
  const seen = this.seen
  this.addEventListener('loadend', () => note('requests', { api: 'xhr', ...seen, status: this.status }))
  return send.call(this, body)
}
const realFetch = window.fetch
window.fetch = async (input, init) => {
  const method = String(init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase()
  const url = String(input instanceof Request ? input.url : input)
  try {
    const response = await realFetch(input, init)
    note('requests', { api: 'fetch', method, url, status: response.status })
    return response
  } catch (error) {
    note('requests', { api: 'fetch', method, url, status: 0, message: String(error) })
    throw error
  }
}
}
</script>
<script type="module">
import { Uppy, AwsS3, GoldenRetriever } from '/uppy.min.mjs'

const params = new URLSearchParams(location.search)
const state = window.state
const event = (entry) => note('events', entry)
const uppy = new Uppy({ autoProceed: false })
window.uppy = uppy
// Uppy 6 names the option companionEndpoint, Uppy 5 endpoint (the page is told which)
const always = params.get('multipart') === 'always' ? { shouldUseMultipart: () => true } : {}
uppy.use(AwsS3, { [params.get('option') ?? 'companionEndpoint']: params.get('companion'), ...always })
uppy.on('restored', () => {
  state.restored = true
  event({ event: 'restored', files: window.files() })
})
uppy.use(GoldenRetriever, JSON.parse(params.get('golden') ?? '{}'))
uppy.on('file-added', (file) => event({ event: 'added', name: file.name, id: file.id }))
uppy.on('upload-progress', (file, progress) => { state.progress[file.name] = progress.bytesUploaded })
uppy.on('s3-multipart:part-uploaded', (file, part) => {
  event({ event: 'part', name: file.name, part: part.PartNumber })
})
uppy.on('upload-success', (file, response) => {
  event({ event: 'success', name: file.name, uploadURL: response.uploadURL })
})
uppy.on('upload-error', (file, error) => {
  event({ event: 'error', name: file?.name ?? null, message: String(error?.message ?? error) })
})
uppy.on('restriction-failed', (file, error) => {
  event({ event: 'restriction-failed', name: file?.name ?? null, message: String(error?.message ?? error) })
})
window.files = () => uppy.getFiles().map((file) => ({
  id: file.id,
  name: file.name,
  size: file.size,
  isGhost: Boolean(file.isGhost),
  isRestored: Boolean(file.isRestored),
  complete: Boolean(file.progress.uploadComplete),
  bytesUploaded: file.progress.bytesUploaded || 0,
  uploadURL: file.response?.uploadURL ?? null,
  error: file.error ?? null,
  s3Multipart: file.s3Multipart ?? null,
}))
// Golden Retriever's saved snapshot, written at most every 500 ms: Uppy 5's in localStorage
// (uppyState:<id>), Uppy 6's in IndexedDB (uppy-blobs/metadata)
window.saved = () => new Promise((resolve) => {
  const local = localStorage.getItem('uppyState:' + uppy.getID())
  if (local) {
    try { resolve(JSON.parse(local).metadata) } catch { resolve(null) }
    return
  }
  const opened = indexedDB.open('uppy-blobs')
  opened.onerror = () => resolve(null)
  opened.onsuccess = () => {
    const db = opened.result
    if (!db.objectStoreNames.contains('metadata')) { db.close(); resolve(null); return }
    const got = db.transaction(['metadata']).objectStore('metadata').get(uppy.getID())
    got.onsuccess = () => { db.close(); resolve(got.result ? JSON.parse(got.result.metadata) : null) }
    got.onerror = () => { db.close(); resolve(null) }
  }
})
// Whether that snapshot agrees with the live state on what a reload needs: each file, whether it
// is complete, and its multipart upload.
window.savedInSync = async () => {
  const saved = await window.saved()
  return Boolean(saved) && uppy.getFiles().every((file) => {
    const kept = saved.files?.[file.id]
    return kept != null
      && Boolean(kept.progress?.uploadComplete) === Boolean(file.progress.uploadComplete)
      && (kept.s3Multipart?.uploadId ?? null) === (file.s3Multipart?.uploadId ?? null)
  })
}
window.done = (count) => {
  const files = uppy.getFiles()
  return files.length === count && files.every((f) => !f.isGhost && (f.progress.uploadComplete || f.error))
}
document.getElementById('picker').addEventListener('change', (change) => {
  uppy.addFiles([...change.target.files].map((file) => (
    { name: file.name, type: file.type, data: file, source: 'picker' }
  )))
})
window.ready = true
</script>
"""


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One request the page made, reported when it ended (one cut by the reload is not)."""

    load: int  # 0: the first page load, 1: after the reload
    api: str  # "xhr": the bytes, to S3; "fetch": the Companion endpoints
    method: str
    url: str
    status: int  # 0: failed at the network level

    def query(self, name: str) -> str | None:
        values = parse_qs(urlsplit(self.url).query).get(name)
        return values[0] if values else None

    @property
    def part_number(self) -> int | None:
        """The part number of a part ``PUT`` to S3 (``None`` for anything else)."""
        number = self.query("partNumber")
        if self.api != "xhr" or self.method != "PUT" or number is None:
            return None
        return int(number)


@dataclass(frozen=True, slots=True)
class UploadRun:
    """What the page did, over both loads."""

    events: list[dict[str, Any]]  # page events in order, each with its "load"
    requests: list[PageRequest]
    files: list[dict[str, Any]]  # Uppy's files at the end (see window.files in the page)
    multipart_before: dict[str, str] | None  # the big file's {uploadId, key} at the reload
    multipart_restored: dict[str, str] | None  # the same, as Golden Retriever restored it
    regained: list[str]  # names of the ghost files picked again after the reload
    progress_at_reload: int  # the big file's bytes uploaded when the reload was asked
    page_errors: list[str]
    seconds: dict[str, float] = field(default_factory=dict)  # to_reload, restore, after_reload

    def successes(self) -> dict[str, str]:
        """File name -> ``uploadURL`` of each ``upload-success``, over both loads."""
        return {e["name"]: e["uploadURL"] for e in self.events if e["event"] == "success"}

    def upload_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] in {"error", "restriction-failed"}]

    def part_puts(self, load: int, upload_id: str | None = None) -> list[int]:
        """Part numbers of the part ``PUT``s S3 answered 2xx during ``load`` (of ``upload_id``
        only, if given), in the order they ended."""
        return [
            request.part_number
            for request in self.requests
            if request.load == load
            and request.part_number is not None
            and 200 <= request.status < 300
            and (upload_id is None or request.query("uploadId") == upload_id)
        ]

    def companion_calls(self, load: int) -> list[tuple[str, str, int]]:
        """(method, path, status) of the Companion requests during ``load``; the path starts
        at ``/s3/``."""
        calls = []
        for request in self.requests:
            if request.load == load and request.api == "fetch":
                path = urlsplit(request.url).path
                calls.append((request.method, path[path.find("/s3/") :], request.status))
        return calls


def _poll(page: Page, expression: str, timeout: float) -> None:
    """Evaluate ``expression`` (which may return a promise) every 50 ms until it is truthy."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} still false after {timeout} s")
        page.wait_for_timeout(50)


@contextmanager
def uppy_s3_site(package: str = "uppy") -> Iterator[str]:
    """The page and the bundle of ``package`` (``uppy``: Uppy 6; ``uppy5``: Uppy 5, see
    tests/js/package.json) on a static origin of their own; yields the origin."""
    bundle = npm_package(package) / "dist" / "uppy.min.mjs"
    routes = {
        "/": (UPPY_S3_PAGE.encode(), "text/html; charset=utf-8"),
        "/uppy.min.mjs": (bundle.read_bytes(), "text/javascript"),
    }
    with static_site(routes) as origin:
        yield origin


def upload_with_reload(
    origin: str,
    companion_endpoint: str,
    files: Sequence[Path],
    *,
    big: Path,
    reload_after_bytes: int,
    keep_in_indexeddb: int | None = None,
    timeout: float = 300.0,
    option: str = "companionEndpoint",
    always_multipart: bool = False,
) -> UploadRun:
    """Upload ``files`` from the page at ``origin`` (``uppy_s3_site``) through
    ``companion_endpoint``; reload the page once ``big`` (one of ``files``, above the 100 MiB
    multipart threshold) has ``reload_after_bytes`` uploaded; pick again the files that came back
    as ghosts, resume, and wait until every file succeeded or failed.

    ``keep_in_indexeddb``: Golden Retriever's ``indexedDB.maxFileSize`` (default 10 MiB, so the
    big file comes back as a ghost and is picked again). ``timeout`` (seconds) bounds each wait.
    ``option``: the plugin's option that takes the endpoint (``endpoint`` in Uppy 5).
    ``always_multipart``: every file by multipart, none by a form-POST policy.
    Raises on a wait that times out; upload errors are in the result, not raised."""
    if big not in files:
        raise ValueError(f"{big} is not one of the files")
    if not 0 < reload_after_bytes < big.stat().st_size:
        raise ValueError("reload_after_bytes must be within the big file")
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    query: dict[str, str] = {"companion": companion_endpoint, "option": option}
    if always_multipart:
        query["multipart"] = "always"
    if keep_in_indexeddb is not None:
        total = max(300 * MiB, 2 * sum(path.stat().st_size for path in files))
        golden = {"indexedDB": {"maxFileSize": keep_in_indexeddb, "maxTotalSize": total}}
        query["golden"] = json.dumps(golden)
    url = f"{origin}/?{urlencode(query)}"
    wait_ms = timeout * 1000
    by_name = {path.name: path for path in files}
    reports: list[dict[str, Any]] = []
    page_errors: list[str] = []
    seconds: dict[str, float] = {}

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_context().new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))

            def report(entry: dict[str, Any]) -> None:  # a bound builtin cannot be exposed
                reports.append(entry)

            page.expose_function("report", report)
            started = time.monotonic()
            page.goto(url)
            page.wait_for_function("window.ready === true", timeout=30_000)
            page.set_input_files("#picker", [str(path) for path in files])
            page.wait_for_function(
                f"window.uppy.getFiles().length === {len(files)}", timeout=30_000
            )
            page.evaluate("() => { window.uppy.upload() }")  # resolves when all are done
            page.wait_for_function(
                "([name, bytes]) => (window.state.progress[name] ?? 0) >= bytes"
                " || window.state.events.some((e) => e.event === 'error')",
                arg=[big.name, reload_after_bytes],
                timeout=wait_ms,
            )
            failed = page.evaluate("window.state.events.filter((e) => e.event === 'error')")
            if failed:
                raise AssertionError(f"an upload failed before the reload: {failed}")
            # A reload within 500 ms of a change loses it (the snapshot is throttled): wait for
            # the snapshot to hold the big file's multipart upload and the files completed.
            _poll(page, "() => window.savedInSync()", 30.0)  # async: wait_for_function can't
            progress_at_reload = int(
                page.evaluate("(name) => window.state.progress[name]", big.name)
            )
            before = page.evaluate(
                "(name) => window.files().find((f) => f.name === name).s3Multipart", big.name
            )
            reloaded = time.monotonic()
            seconds["to_reload"] = reloaded - started

            page.reload()
            page.wait_for_function(
                "window.ready === true && window.state.restored === true", timeout=30_000
            )
            ghosts: list[str] = page.evaluate(
                "() => window.files().filter((f) => f.isGhost).map((f) => f.name)"
            )
            missing = [name for name in ghosts if name not in by_name]
            if missing:
                raise AssertionError(f"restored ghosts that are not among the files: {missing}")
            if ghosts:
                page.set_input_files("#picker", [str(by_name[name]) for name in ghosts])
                page.wait_for_function(
                    "() => window.files().every((f) => !f.isGhost)", timeout=30_000
                )
            restored = page.evaluate(
                "(name) => window.files().find((f) => f.name === name)?.s3Multipart ?? null",
                big.name,
            )
            resumed = time.monotonic()
            seconds["restore"] = resumed - reloaded
            page.evaluate("() => { window.uppy.emit('restore-confirmed') }")
            page.wait_for_function("(count) => window.done(count)", arg=len(files), timeout=wait_ms)
            seconds["after_reload"] = time.monotonic() - resumed
            final: list[dict[str, Any]] = page.evaluate("() => window.files()")
            # Bindings answer in order: once this one is back, every earlier report is in.
            page.evaluate("async () => { await window.report({ kind: 'end' }) }")
        finally:
            browser.close()

    events = [{k: v for k, v in r.items() if k != "kind"} for r in reports if r["kind"] == "events"]
    requests = [
        PageRequest(
            load=int(r["load"]),
            api=str(r["api"]),
            method=str(r["method"]),
            url=str(r["url"]),
            status=int(r["status"]),
        )
        for r in reports
        if r["kind"] == "requests"
    ]
    return UploadRun(
        events=events,
        requests=requests,
        files=final,
        multipart_before=before,
        multipart_restored=restored,
        regained=ghosts,
        progress_at_reload=progress_at_reload,
        page_errors=page_errors,
        seconds=seconds,
    )
