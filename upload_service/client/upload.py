"""``upload-service upload``: one file at a time, in one stream or in ``--parallel`` parts.

A file's upload URL (or its parts' URLs) is kept in the resume store from the moment it is
created; running the same command again asks the server where each one stands and sends only
the rest. ``--parallel N`` (where the server advertises ``concatenation``) creates N partial
uploads of consecutive ranges, sends them at once over N connections, then creates their final
upload, whose URL is the result.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from upload_service.client.errors import REFUSED, USAGE, ExitError
from upload_service.client.progress import Display, Meter
from upload_service.client.store import Entry, FileKey, ResumeStore
from upload_service.client.tus import CHECKSUM_PREFERENCE, Capabilities, Session


@dataclass(frozen=True, slots=True)
class Options:
    chunk_size: int
    parallel: int = 1
    checksum: str | None = None  # an algorithm, "auto", or None
    metadata: tuple[tuple[str, str], ...] = ()


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
        return url

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
