"""Helpers for the end-to-end tests: a real ``upload-service serve`` process, raw and httpx tus
requests, file hashing, the asyncio slow-callback log parser and the ``require_tool`` policy."""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler
from typing import IO, NoReturn
from urllib.parse import urlsplit

import httpx
import pytest

KiB = 1024
MiB = 1024 * KiB
PIECE = 8 * MiB
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_CT = "application/offset+octet-stream"
# Generous: big bodies over loopback on a loaded 2-core machine; no test asserts on speed.
HTTP_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


# -- components ---------------------------------------------------------------------------------


def require_tool(name: str) -> str:
    """The path of an external program the test needs.

    Missing on a user's machine: the test skips and says why. Missing in CI (``CI=true``): the test
    fails, because a skipped requirement there would silently hide a broken environment.
    """
    path = shutil.which(name)
    if path is None:
        missing(f"{name!r} is not installed (needed by this end-to-end test)")
    return path


def missing(reason: str) -> NoReturn:
    """Skip the test for a missing component, or fail it under ``CI=true``."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason}; CI=true, so a missing component is a failure")
    pytest.skip(reason)


# Further logs (beyond the servers') a test wants in its report when it fails: (title, path).
REPORT_LOGS = pytest.StashKey[list[tuple[str, Path]]]()


def attach_log_on_failure(item: pytest.Item, title: str, path: Path) -> None:
    """Show the tail of ``path`` in ``item``'s report if the test fails (see conftest.py)."""
    if REPORT_LOGS not in item.stash:
        item.stash[REPORT_LOGS] = []
    item.stash[REPORT_LOGS].append((title, path))


# -- files --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    path: Path
    size: int
    sha256: str


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        remaining = size
        while remaining > 0:
            piece = min(PIECE, remaining)
            out.write(os.urandom(piece))
            remaining -= piece


def _hash_stream(stream: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    while limit is None or total < limit:
        want = PIECE if limit is None else min(PIECE, limit - total)
        piece = stream.read(want)
        if not piece:
            break
        digest.update(piece)
        total += len(piece)
    return digest.hexdigest(), total


def sha256_file(path: Path, limit: int | None = None) -> str:
    """sha256 of the whole file, or of its first ``limit`` bytes (which must all be there)."""
    with path.open("rb") as stream:
        digest, read = _hash_stream(stream, limit)
    if limit is not None:
        assert read == limit, f"{path} holds {read} bytes, fewer than {limit}"
    return digest


def stored_file(data_dir: Path, upload_id: str) -> Path:
    """Where the local store keeps an upload's bytes (``<data>/files/<id>``; found by name if the
    layout ever nests it deeper)."""
    direct = data_dir / "files" / upload_id
    if direct.exists():
        return direct
    matches = [path for path in data_dir.rglob(upload_id) if path.is_file()]
    assert len(matches) == 1, f"cannot find the stored bytes of {upload_id}: {matches}"
    return matches[0]


# -- the server process -------------------------------------------------------------------------


def wait_for_readyz(
    base_url: str,
    process: subprocess.Popen[bytes],
    name: str,
    log: Callable[[], str],
    timeout: float,
    *,
    before: str = "",
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Until ``base_url``'s ``/readyz`` answers 200; fails the test (with ``log()``) when
    ``process`` exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=2.0, verify=verify) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                when = f" {before}" if before else ""
                pytest.fail(f"{name} exited with {process.returncode}{when}:\n{log()}")
            try:
                response = client.get(f"{base_url}/readyz")
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            time.sleep(0.05)
    pytest.fail(f"{name} not ready after {timeout}s ({last}):\n{log()}")


@contextmanager
def http_server(
    handler: Callable[..., BaseRequestHandler], name: str, *, port: int = 0
) -> Iterator[int]:
    """A threading HTTP server on 127.0.0.1 with ``handler``, in a thread named ``name``, on
    ``port`` if it is free (else on any free port); yields its port, and shuts it down at the
    end."""
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def established(port: int) -> int:
    """TCP connections accepted on 127.0.0.1:``port`` that are open in both directions."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            count += 1
    return count


def serve_command() -> list[str]:
    return cli_command("serve")


def cli_command(command: str) -> list[str]:
    """``upload-service COMMAND`` of the running interpreter's environment."""
    script = Path(sys.executable).with_name("upload-service")
    if script.exists():
        return [str(script), command]
    return [sys.executable, "-m", "upload_service", command]


class ServerProcess:
    """One ``upload-service serve`` process on 127.0.0.1; output goes to ``log_path``."""

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int,
        log_path: Path,
        env: Mapping[str, str],
        command: Sequence[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.name = log_path.name
        self.base_url = f"http://127.0.0.1:{port}"
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("UPLOAD_") and key not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")
        }
        environment.update(UPLOAD_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
        environment.update(env)
        self.environment = environment  # what the process got (a CLI command beside it, too)
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*(command or serve_command()), "--host", "127.0.0.1", "--port", str(port)]
        with log_path.open("ab") as log:
            # cwd: the data dir's parent, so a developer's .env in the repository is not read.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=data_dir.parent,
            )
        self.pid = self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for_readyz(
            self.base_url,
            self.process,
            "server",
            self.log_text,
            timeout,
            before="before it was ready",
        )

    def kill9(self) -> None:
        """kill -9 by PID, then reap it."""
        if self.running:  # not reaped yet, so the PID is still this process
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL after ``grace`` seconds."""
        if self.running:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.process.wait(timeout=30)


class Servers:
    """Starts server processes for one test and stops every one of them (by PID) at the end."""

    def __init__(self, root: Path, base_env: Mapping[str, str] | None = None) -> None:
        self._root = root
        self._base_env = dict(base_env or {})  # every server's, under each start's own env
        self.started: list[ServerProcess] = []

    def start(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> ServerProcess:
        """Start a server (``command`` replaces ``upload-service serve``) and wait until ready."""
        server = ServerProcess(
            data_dir=data_dir if data_dir is not None else self._root / "data",
            port=port if port is not None else free_port(),
            log_path=self._root / f"server-{len(self.started) + 1}.log",
            env={**self._base_env, **(env or {})},
            command=command,
        )
        self.started.append(server)
        server.wait_ready()
        return server

    def restart(self, server: ServerProcess, env: Mapping[str, str] | None = None) -> ServerProcess:
        """A new process on the same data directory and port (so upload URLs stay valid)."""
        assert not server.running, "stop or kill the old process first"
        return self.start(server.data_dir, port=server.port, env=env)

    def stop_all(self) -> None:
        failures: list[BaseException] = []
        for server in self.started:
            try:
                server.stop()
            except BaseException as exc:  # keep stopping the others, then re-raise
                failures.append(exc)
        if failures:
            raise failures[0]


# -- tus over httpx -----------------------------------------------------------------------------


def create_upload(
    client: httpx.Client, base_url: str, length: int, filename: str = "source.bin"
) -> str:
    metadata = f"filename {b64encode(filename.encode()).decode()}"
    response = client.post(
        f"{base_url}/files/",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata},
    )
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    return str(httpx.URL(base_url).join(location))


def head_offset(client: httpx.Client, url: str) -> int:
    response = client.head(url, headers=TUS)
    assert response.status_code == 200, f"HEAD {url}: {response.status_code}"
    return int(response.headers["Upload-Offset"])


def upload_id_of(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def _file_pieces(path: Path, offset: int, size: int) -> Iterator[bytes]:
    with path.open("rb") as stream:
        stream.seek(offset)
        remaining = size - offset
        while remaining > 0:
            piece = stream.read(min(MiB, remaining))
            if not piece:
                raise AssertionError(f"{path} ended early")
            remaining -= len(piece)
            yield piece


def patch_file(client: httpx.Client, url: str, source: Source, offset: int) -> httpx.Response:
    """One PATCH with the rest of ``source`` from ``offset``, streamed (Content-Length set)."""
    headers = {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": OFFSET_CT,
        "Content-Length": str(source.size - offset),
    }
    return client.patch(
        url, headers=headers, content=_file_pieces(source.path, offset, source.size)
    )


def create_partial(client: httpx.Client, base_url: str, length: int) -> str:
    """A partial upload (concatenation extension); returns its absolute URL."""
    response = client.post(
        f"{base_url}/files/",
        headers={**TUS, "Upload-Length": str(length), "Upload-Concat": "partial"},
    )
    assert response.status_code == 201, response.text
    return str(httpx.URL(base_url).join(response.headers["Location"]))


def patch_range(
    client: httpx.Client, url: str, source: Source, start: int, end: int, *, upload_offset: int = 0
) -> httpx.Response:
    """One PATCH at ``upload_offset`` carrying ``source[start:end]``, streamed (Content-Length
    set): offset 0 fills a partial upload with a slice; ``upload_offset=start`` sends one chunk."""
    headers = {
        **TUS,
        "Upload-Offset": str(upload_offset),
        "Content-Type": OFFSET_CT,
        "Content-Length": str(end - start),
    }
    return client.patch(url, headers=headers, content=_file_pieces(source.path, start, end))


def resume(client: httpx.Client, url: str, source: Source, attempts: int = 5) -> None:
    """What a tus client does after a break: HEAD, PATCH the rest from there; on 409 (the server
    committed more meanwhile) or 423 (the broken request still holds the upload) ask again."""
    statuses: list[int] = []
    for _ in range(attempts):
        offset = head_offset(client, url)
        if offset == source.size:
            return
        response = patch_file(client, url, source, offset)
        statuses.append(response.status_code)
        if response.status_code == 204:
            assert int(response.headers["Upload-Offset"]) == source.size
            return
        assert response.status_code in (409, 423), f"{response.status_code}: {response.text}"
        time.sleep(0.2)
    pytest.fail(f"could not resume {url}: statuses {statuses}")


def upload_in_chunks(
    client: httpx.Client, url: str, source: Source, offset: int = 0, *, chunk: int
) -> None:
    """A chunking tus client: PATCH ``chunk`` bytes at a time from ``offset``; on 409 or 423 (a
    broken request still holds the upload, or committed more) ask HEAD where to go on."""
    conflicts = 0
    while offset < source.size:
        end = min(offset + chunk, source.size)
        response = patch_range(client, url, source, offset, end, upload_offset=offset)
        if response.status_code in (409, 423):
            conflicts += 1
            assert conflicts <= 10, f"still {response.status_code} after {conflicts} tries"
            time.sleep(0.2)
            offset = head_offset(client, url)
            continue
        assert response.status_code == 204, f"{response.status_code}: {response.text}"
        offset = int(response.headers["Upload-Offset"])
        assert offset == end


def wait_until_ready(client: httpx.Client, url: str, timeout: float = 120.0) -> None:
    """Wait for ``GET /api/uploads/{id}`` to say ``ready``: a complete upload may pass through a
    short server-side state (e.g. verifying) before it can be downloaded."""
    status_url = str(httpx.URL(url).copy_with(path=f"/api/uploads/{upload_id_of(url)}"))
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(status_url)
        assert response.status_code == 200, response.text
        if response.json()["state"] == "ready":
            return
        if time.monotonic() > deadline:
            pytest.fail(f"upload not ready after {timeout}s: {response.text}")
        time.sleep(0.05)


def download_sha256(client: httpx.Client, url: str) -> tuple[str, int]:
    """Once the upload is ready, GET /files/{id}, streamed and hashed; returns (sha256, bytes)."""
    wait_until_ready(client, url)
    digest = hashlib.sha256()
    total = 0
    with client.stream("GET", url) as response:
        assert response.status_code == 200, response.read()[:200]
        expected = int(response.headers["Content-Length"])
        for piece in response.iter_bytes(MiB):
            digest.update(piece)
            total += len(piece)
    assert total == expected, f"downloaded {total} bytes, Content-Length said {expected}"
    return digest.hexdigest(), total


# -- a raw PATCH that can break off -------------------------------------------------------------


class RawPatch(threading.Thread):
    """PATCH the rest of ``source`` from ``offset`` over a plain socket, announcing the full
    Content-Length, optionally paced to ``rate`` bytes/s, and break off: after ``limit`` bytes,
    when ``interrupt()`` is called, or when the server goes away.

    ``sent`` counts bytes the kernel accepted; ``attempted`` adds the piece being handed over, an
    upper bound on what the server can have received even when the last send failed midway.
    With ``read_answer``, it stops sending as soon as the server answers (it looks before each
    piece) and reads the answer: ``status`` and ``answered_offset`` are the answer's.
    ``headers`` go with the request (``Authorization``, say).
    Call ``run()`` to send in the calling thread, or ``start()`` for a background thread.
    """

    def __init__(
        self,
        url: str,
        source: Source,
        offset: int,
        *,
        rate: float | None = None,
        limit: int | None = None,
        reset: bool = False,
        piece: int = 64 * KiB,
        read_answer: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name="raw-patch", daemon=True)
        self.headers = dict(headers or {})
        self.url = url
        self.source = source
        self.offset = offset
        self.rate = rate
        self.limit = limit
        self.reset = reset
        self.piece = piece
        self.read_answer = read_answer
        self.sent = 0
        self.attempted = 0
        self.status: int | None = None
        self.answered_offset: int | None = None
        self.error: OSError | None = None
        self._stop_sending = threading.Event()

    def interrupt(self) -> None:
        self._stop_sending.set()

    def run(self) -> None:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        assert parts.port is not None
        length = self.source.size - self.offset
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\n"
            "Tus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: {self.offset}\r\n"
            f"Content-Type: {OFFSET_CT}\r\n"
            f"Content-Length: {length}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
            + "\r\n"
        ).encode("ascii")
        wanted = length if self.limit is None else min(self.limit, length)
        started = time.monotonic()
        try:
            with (
                socket.create_connection((parts.hostname, parts.port), timeout=30) as sock,
                self.source.path.open("rb") as stream,
            ):
                sock.sendall(head)
                stream.seek(self.offset)
                answered = False
                while self.sent < wanted and not self._stop_sending.is_set() and not answered:
                    piece = stream.read(min(self.piece, wanted - self.sent))
                    self.attempted = self.sent + len(piece)
                    answered = self._send(sock, piece)
                    if self.rate is not None:
                        ahead = self.sent / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                if self.reset:  # close with RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if self.read_answer:
                    self._read_answer(sock)
        except OSError as exc:  # the server was killed: the point of some tests
            self.error = exc

    def _send(self, sock: socket.socket, piece: bytes) -> bool:
        """Hand ``piece`` to the kernel as room frees up, counting ``sent``; True, leaving the
        rest, as soon as the server answered (or closed). Never blocked in a send while the
        answer waits: a server that stops reading answers and closes, and the reset of a close
        with unread bytes would take the answer with it once it reaches a client still sending."""
        view = memoryview(piece)
        watched = [sock] if self.read_answer else []
        while view:
            readable, writable, _ = select.select(watched, [sock], [], 30)
            if readable:
                return True
            if not writable:
                raise TimeoutError("the server took nothing for 30 s")
            count = sock.send(view)
            view = view[count:]
            self.sent += count
        return False

    def _read_answer(self, sock: socket.socket) -> None:
        self.status, headers = read_answer(sock)
        if "upload-offset" in headers:
            self.answered_offset = int(headers["upload-offset"])


def read_answer(sock: socket.socket) -> tuple[int | None, dict[str, str]]:
    """The status and the headers (names in lower case) of the answer read from ``sock``; None
    for the status when the server closed before a status line."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/1.1 ") else None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


# -- asyncio's slow-callback warnings -----------------------------------------------------------

_SLOW_CALLBACK = re.compile(r"Executing (?P<what>.+?) took (?P<seconds>\d+(?:\.\d+)?) seconds")


@dataclass(frozen=True, slots=True)
class SlowCallback:
    what: str
    seconds: float


def slow_callbacks(log: str) -> list[SlowCallback]:
    """Every ``Executing <handle> took X seconds`` warning asyncio (or uvloop) logged in debug mode."""
    return [
        SlowCallback(match["what"], float(match["seconds"]))
        for match in _SLOW_CALLBACK.finditer(log)
    ]


def serving_loop_log(log: str) -> str:
    """The part of a server log written once uvicorn's loop runs (from ``Started server process``).

    Before it, ``serve`` applies migrations through Alembic, which runs its own short-lived asyncio
    loop around blocking SQLite calls; that loop never serves a request, so it is not judged.
    Without the marker the whole log is returned (never less strict than asked).
    """
    start = log.find("Started server process")
    return log if start < 0 else log[log.rfind("\n", 0, start) + 1 :]


def blocking_callbacks(log: str, threshold: float = 0.1) -> list[SlowCallback]:
    return [slow for slow in slow_callbacks(log) if slow.seconds > threshold]
