"""The benchmark's tus client: cheap on CPU so that the server, not the client, is measured.

Bodies go out with ``sendfile`` from the (page-cached) source file on plain keep-alive
``http.client`` connections, one thread per upload (the GIL is released while the kernel copies);
the single-PATCH case uses curl, as a user would. The latency probe runs in its own thread on its
own connection. Everything talks to 127.0.0.1 only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from bench.config import MiB

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_CT = "application/offset+octet-stream"
PACED_PIECE = 64 * 1024


class ClientError(Exception):
    """A request did not get the answer tus prescribes."""


class Unsupported(ClientError):
    """The server does not offer what the scenario needs (e.g. the checksum extension)."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection to a server on 127.0.0.1."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.base_url = base_url
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _reply(self) -> Reply:
        response = self._conn.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, body)

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> Reply:
        self._conn.request(method, path, body=body, headers=dict(headers))
        return self._reply()

    def send_file(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        source: BinaryIO,
        offset: int,
        count: int,
        rate: float | None = None,
    ) -> Reply:
        """A request whose body is ``count`` bytes of ``source`` from ``offset``, by sendfile;
        paced to ``rate`` bytes/s when given. A server that answers early (and closes) is read."""
        self._conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(count)}.items():
            self._conn.putheader(name, value)
        self._conn.endheaders()
        sock = self._conn.sock
        assert sock is not None
        try:
            if rate is None:
                sock.sendfile(source, offset, count)
            else:
                started = time.monotonic()
                sent = 0
                while sent < count:
                    piece = min(PACED_PIECE, count - sent)
                    sock.sendfile(source, offset + sent, piece)
                    sent += piece
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError as exc:
            try:
                return self._reply()
            except (OSError, http.client.HTTPException):
                raise ClientError(f"{method} {path}: sending the body failed: {exc!r}") from exc
        return self._reply()


def upload_path(reply: Reply, base_url: str) -> str:
    if reply.status != 201 or "location" not in reply.headers:
        raise ClientError(f"POST answered {reply.status} {reply.body[:200]!r}")
    return urlsplit(urljoin(base_url + "/", reply.headers["location"])).path


def create(conn: Connection, files_path: str, length: int) -> str:
    """POST a new upload of ``length`` bytes; its path on the server."""
    reply = conn.request("POST", files_path, {**TUS, "Upload-Length": str(length)})
    return upload_path(reply, conn.base_url)


def _check_offset(reply: Reply, expected: int) -> None:
    if reply.status != 204:
        raise ClientError(f"PATCH answered {reply.status} {reply.body[:200]!r}")
    offset = reply.headers.get("upload-offset")
    if offset is None or int(offset) != expected:
        raise ClientError(f"PATCH answered Upload-Offset {offset}, expected {expected}")


def patch(
    conn: Connection,
    path: str,
    source: BinaryIO,
    offset: int,
    count: int,
    *,
    rate: float | None = None,
    checksum: str | None = None,
) -> None:
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT}
    if checksum is not None:
        headers["Upload-Checksum"] = f"sha256 {checksum}"
    reply = conn.send_file("PATCH", path, headers, source, offset, count, rate)
    if checksum is not None and reply.status in (400, 460):
        raise Unsupported(f"PATCH with Upload-Checksum answered {reply.status}")
    _check_offset(reply, offset + count)


def chunk_checksums(path: Path, size: int, chunk: int) -> list[str]:
    """base64 sha256 of every ``chunk`` of the first ``size`` bytes of ``path``."""
    digests = []
    with path.open("rb") as stream:
        for start in range(0, size, chunk):
            digest = hashlib.sha256()
            remaining = min(chunk, size - start)
            while remaining > 0:
                piece = stream.read(min(8 * MiB, remaining))
                digest.update(piece)
                remaining -= len(piece)
            digests.append(base64.b64encode(digest.digest()).decode("ascii"))
    return digests


@dataclass(frozen=True, slots=True)
class FileDigests:
    """What a file's bytes hash to: its sha256, and the MD5s S3 makes its ETag of."""

    size: int
    sha256: str  # hex
    md5: str  # hex, of the whole file: the ETag of a single PutObject
    part_size: int
    part_md5s: tuple[bytes, ...]  # of every ``part_size`` piece

    def multipart_etag(self) -> str:
        """The ETag of a completed multipart upload of parts of ``part_size``: the MD5 of the
        parts' MD5s, then ``-<number of parts>``."""
        joined = hashlib.md5(b"".join(self.part_md5s), usedforsecurity=False)
        return f"{joined.hexdigest()}-{len(self.part_md5s)}"


def file_digests(path: Path, part_size: int) -> FileDigests:
    whole = hashlib.sha256()
    whole_md5 = hashlib.md5(usedforsecurity=False)
    parts: list[bytes] = []
    size = 0
    with path.open("rb") as stream:
        while piece := stream.read(part_size):
            whole.update(piece)
            whole_md5.update(piece)
            parts.append(hashlib.md5(piece, usedforsecurity=False).digest())
            size += len(piece)
    return FileDigests(size, whole.hexdigest(), whole_md5.hexdigest(), part_size, tuple(parts))


def chunked_upload(
    conn: Connection,
    path: str,
    source: BinaryIO,
    size: int,
    chunk: int,
    checksums: list[str] | None = None,
) -> None:
    """PATCH ``size`` bytes in ``chunk``-sized requests, one after another, on ``conn``."""
    for index, start in enumerate(range(0, size, chunk)):
        checksum = None if checksums is None else checksums[index]
        patch(conn, path, source, start, min(chunk, size - start), checksum=checksum)


def advertises(conn: Connection, files_path: str, extension: str) -> bool:
    reply = conn.request("OPTIONS", files_path, TUS)
    extensions = reply.headers.get("tus-extension", "")
    return extension in [part.strip() for part in extensions.split(",")]


def checksum_algorithms(conn: Connection, files_path: str) -> list[str]:
    reply = conn.request("OPTIONS", files_path, TUS)
    algorithms = reply.headers.get("tus-checksum-algorithm", "")
    return [part.strip().lower() for part in algorithms.split(",") if part.strip()]


@dataclass(frozen=True, slots=True)
class CurlResult:
    seconds: float
    cpu_seconds: float  # curl's own user + system time


def curl_patch(url: str, source: Path, offset: int, size: int, timeout: float) -> CurlResult:
    """``curl -X PATCH -T file`` as the README shows; the time is curl's ``time_total``."""
    curl = shutil.which("curl")
    if curl is None:
        raise ClientError("curl is not installed")
    argv = [
        curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{size_upload}",
        "--max-time", str(int(timeout)), "-X", "PATCH", "-T", str(source),
        "-H", "Tus-Resumable: 1.0.0", "-H", f"Upload-Offset: {offset}",
        "-H", f"Content-Type: {OFFSET_CT}", url,
    ]  # fmt: skip
    before = os.times()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    after = os.times()
    if done.returncode != 0:
        raise ClientError(f"curl exited {done.returncode}: {done.stderr.strip()}")
    status, seconds, uploaded = done.stdout.split()
    if status != "204" or int(float(uploaded)) != size:
        raise ClientError(f"curl PATCH: HTTP {status}, uploaded {uploaded} of {size} bytes")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return CurlResult(seconds=float(seconds), cpu_seconds=cpu)


def curl_form(url: str, source: Path, size: int, timeout: float) -> CurlResult:
    """``curl -F file=@FILE`` (a form upload, as the README shows); the time is curl's
    ``time_total``, until the 201 that lists the upload."""
    curl = shutil.which("curl")
    if curl is None:
        raise ClientError("curl is not installed")
    argv = [
        curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{size_upload}",
        "--max-time", str(int(timeout)), "-F", "title=bench", "-F", f"file=@{source}", url,
    ]  # fmt: skip
    before = os.times()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    after = os.times()
    if done.returncode != 0:
        raise ClientError(f"curl exited {done.returncode}: {done.stderr.strip()}")
    status, seconds, uploaded = done.stdout.split()
    if status != "201" or int(float(uploaded)) < size:
        raise ClientError(f"curl -F: HTTP {status}, uploaded {uploaded} of {size} bytes")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return CurlResult(seconds=float(seconds), cpu_seconds=cpu)


class Probe(threading.Thread):
    """GET ``path`` every ``interval`` seconds on one keep-alive connection until stopped;
    ``latencies`` holds each request's seconds, ``errors`` counts failures (reconnecting)."""

    def __init__(self, base_url: str, path: str, interval: float, timeout: float) -> None:
        super().__init__(name="latency-probe", daemon=True)
        self.base_url = base_url
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.errors = 0
        self._stop_probing = threading.Event()

    def stop(self) -> None:
        self._stop_probing.set()
        self.join(self.timeout + 5)

    def run(self) -> None:
        conn = Connection(self.base_url, self.timeout)
        try:
            while True:  # at least one request, however short the measurement
                started = time.perf_counter()
                try:
                    reply = conn.request("GET", self.path, {})
                    if reply.status != 200:
                        raise ClientError(f"probe answered {reply.status}")
                    self.latencies.append(time.perf_counter() - started)
                except (OSError, http.client.HTTPException, ClientError):
                    self.errors += 1
                    conn.close()
                    conn = Connection(self.base_url, self.timeout)
                # the next request 10 ms after this one started, or at once if this one was late
                if self._stop_probing.wait(max(0.0, started + self.interval - time.perf_counter())):
                    break
        finally:
            conn.close()
