"""``upload-service upload``: one file at a time, in one stream or in ``--parallel`` parts.

A file's upload URL (or its parts' URLs) is kept in the resume store from the moment it is
created; running the same command again asks the server where each one stands and sends only
the rest. ``--parallel N`` (where the server advertises ``concatenation``) creates N partial
uploads of consecutive ranges, sends them at once over N connections, then creates their final
upload, whose URL is the result. Either way the command waits for the server's verdict: the
server assembles a final upload and computes a file's sha256 after the last byte (in the
background when it could not hash the bytes as they streamed in), and a file counts as uploaded
once its upload is ``ready``.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from upload_service.client.download import api_info
from upload_service.client.errors import FAILED, REFUSED, USAGE, ExitError
from upload_service.client.progress import Display, Meter
from upload_service.client.retry import Stopped
from upload_service.client.store import Entry, FileKey, ResumeStore
from upload_service.client.tus import CHECKSUM_PREFERENCE, Capabilities, Session


@dataclass(frozen=True, slots=True)
class Options:
    chunk_size: int
    parallel: int = 1
    checksum: str | None = None  # an algorithm, "auto", or None
    metadata: tuple[tuple[str, str], ...] = ()
    ready_timeout: float = 600.0  # seconds to wait for the server's verdict after the last byte


# Polling for the verdict: the first look soon (a small file is verified in milliseconds), then
# doubling up to a few seconds (a large one is read back whole, or copied from its parts first).
POLL_FIRST = 0.1
POLL_CAP = 5.0


def ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive (start, length) ranges covering ``size`` bytes (fewer for a tiny
    file: no part is empty)."""
    parts = max(1, min(parts, size))
    step = size // parts
    bounds = [index * step for index in range(parts)] + [size]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


class Uploader:
    def __init__(
        self, session: Session, store: ResumeStore, display: Display, options: Options
    ) -> None:
        self._session = session
        self._store = store
        self._display = display
        self._options = options
        self._capabilities: Capabilities | None = None

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            self._capabilities = self._session.capabilities()
        return self._capabilities

    def checksum(self) -> str | None:
        wanted = self._options.checksum
        if wanted is None:
            return None
        offered = self.capabilities.checksums
        if wanted == "auto":
            for name in CHECKSUM_PREFERENCE:
                if name in offered:
                    return name
            raise ExitError("the server offers no checksum algorithm (Tus-Checksum-Algorithm)", 4)
        if wanted not in offered:
            listed = ", ".join(offered) or "none"
            raise ExitError(f"the server does not take {wanted} checksums (it offers {listed})", 4)
        return wanted

    def metadata(self, path: Path) -> dict[str, str]:
        metadata = {"filename": path.name}
        kind, _ = mimetypes.guess_type(path.name)
        if kind:
            metadata["filetype"] = kind
        metadata.update(self._options.metadata)
        return metadata

    def upload(self, path: Path) -> str:
        """Upload (or finish uploading) one file; returns its upload URL."""
        try:
            key = FileKey.of(path, self._session.endpoint)
        except OSError as exc:
            raise ExitError(f"cannot read {path}: {exc.strerror}", USAGE) from None
        if not path.is_file():
            raise ExitError(f"{path} is not a file", USAGE)
        max_size = self.capabilities.max_size
        if max_size is not None and key.size > max_size:
            raise ExitError(f"{path} is larger than the server takes ({max_size} bytes)", REFUSED)
        checksum = self.checksum()
        meter = Meter(self._display, path.name, key.size)
        entry = self._resumable(key)
        if entry is None:
            parallel = self._options.parallel > 1 and key.size > 1
            if parallel and "concatenation" not in self.capabilities.extensions:
                self._display.note("the server does not offer concatenation: one stream")
                parallel = False
            entry = self._start(key, path, parallel)
        if entry.parts:
            url = self._send_parts(key, path, entry, checksum, meter)
        else:
            assert entry.url is not None
            self._session.send(
                entry.url,
                path,
                start=0,
                length=key.size,
                chunk=self._options.chunk_size,
                checksum=checksum,
                progress=lambda done: meter.update(0, done),
            )
            url = entry.url
        meter.finish()
        self._store.put(key, replace(entry, url=url))
        self._wait_ready(url)
        return url

    def _wait_ready(self, url: str) -> None:
        """Return once the upload at ``url`` is ``ready``; ``ExitError`` (exit status 1) when it
        failed or ended, or is still assembling or verifying after ``ready_timeout`` seconds."""
        timeout = self._options.ready_timeout
        deadline = time.monotonic() + timeout
        delay = POLL_FIRST
        while True:
            state = self._state(url)
            if state == "ready":
                return
            if delay == POLL_FIRST:  # once, so a long verification is not taken for a hang
                self._display.note(f"{url}: every byte is sent; waiting for the server ({state})")
            if time.monotonic() + delay > deadline:
                raise ExitError(
                    f"{url} is not ready after {timeout:g}s (state {state}; every byte is sent, "
                    f"`upload-service status {url}` shows when it is ready)",
                    FAILED,
                )
            if self._session.stop.wait(delay):
                raise Stopped()
            delay = min(delay * 2, POLL_CAP)

    def _state(self, url: str) -> str:
        """The upload's state from the JSON API, or, without one, what HEAD tells: a final
        upload without an offset is still assembling; with every byte, ready as far as tus says."""
        info = api_info(self._session, url)
        if info is not None:
            if info.state in ("failed", "expired", "terminated"):
                why = f": {info.failure}" if info.failure else ""
                raise ExitError(f"{url} is {info.state}{why}", FAILED)
            return info.state
        head = self._session.status(url)
        if head is None:
            raise ExitError(f"{url} is gone from the server", FAILED)
        if head.offset is None:
            return "assembling"
        return "ready" if head.offset == head.length else "receiving"

    def _resumable(self, key: FileKey) -> Entry | None:
        """The stored entry for this file if the server still has its upload(s)."""
        entry = self._store.get(key)
        if entry is None:
            return None
        for url in [entry.url] if entry.url is not None else list(entry.parts):
            if self._session.status(url) is None:
                self._display.note(f"{url} is gone from the server; starting over")
                self._store.drop(key)
                return None
        return entry

    def _start(self, key: FileKey, path: Path, parallel: bool) -> Entry:
        if not parallel:
            url = self._session.create(key.size, self.metadata(path))
            entry = Entry(url=url)
        else:
            parts = [
                self._session.create(length, {}, concat="partial")
                for _start, length in ranges(key.size, self._options.parallel)
            ]
            entry = Entry(parts=tuple(parts))
        self._store.put(key, entry)
        return entry

    def _send_parts(
        self, key: FileKey, path: Path, entry: Entry, checksum: str | None, meter: Meter
    ) -> str:
        if entry.url is not None:  # the final upload exists: the parts were all sent
            return entry.url
        layout = ranges(key.size, len(entry.parts))
        stop = self._session.stop
        with ThreadPoolExecutor(len(entry.parts), thread_name_prefix="part") as pool:
            futures = [
                pool.submit(
                    self._session.send,
                    url,
                    path,
                    start=start,
                    length=length,
                    chunk=self._options.chunk_size,
                    checksum=checksum,
                    progress=_part(meter, index),
                )
                for index, (url, (start, length)) in enumerate(
                    zip(entry.parts, layout, strict=True)
                )
            ]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        stop.set()  # the other parts stop too; the first error is the answer
                        future.result()
            except BaseException:
                stop.set()
                raise
        final = self._session.create(
            key.size, self.metadata(path), concat="final;" + " ".join(entry.parts)
        )
        self._store.put(key, replace(entry, url=final))
        return final


def _part(meter: Meter, index: int) -> Callable[[int], None]:
    return lambda done: meter.update(index, done)
