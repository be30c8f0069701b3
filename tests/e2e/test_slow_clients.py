"""Slow and hostile clients against a real server: a PATCH body that stalls, idle connections by
the thousand, headers trickled a byte at a time (slowloris), and a client that disconnects
mid-body on every request. Meanwhile other clients are served (every GET answers; the p99 is
printed, and docs/reliability.md states it), the server's memory stays bounded, and a stalled
PATCH lets go of its upload after ``UPLOAD_BODY_IDLE_TIMEOUT``."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.support import (
    OFFSET_CT,
    TUS,
    MiB,
    RawPatch,
    Servers,
    Source,
    create_upload,
    download_sha256,
    head_offset,
    patch_file,
    read_answer,
    wait_until_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.solo]  # latencies: alone on the machine

IDLE_TIMEOUT = 1.0
SERVER_ENV = {"UPLOAD_BODY_IDLE_TIMEOUT": str(IDLE_TIMEOUT)}
GETS = 200


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def get_latencies(http: httpx.Client, url: str, count: int) -> list[float]:
    """``count`` GETs of ``url`` one after another: each must answer 200; their seconds."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        response = http.get(url)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return seconds


def p99_ms(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def stalled_patch(url: str, source: Source, sent: int) -> socket.socket:
    """A PATCH announcing the whole file that sends ``sent`` bytes and then nothing, open."""
    sock = connect(url)
    path = urlsplit(url).path
    sock.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: 0\r\nContent-Type: {OFFSET_CT}\r\n"
            f"Content-Length: {source.size}\r\n\r\n"
        ).encode()
    )
    with source.path.open("rb") as stream:
        sock.sendall(stream.read(sent))
    return sock


def test_a_stalled_patch_lets_go_after_the_idle_timeout(
    servers: Servers, http: httpx.Client, source: Source
) -> None:
    server = servers.start(env=SERVER_ENV)
    url = create_upload(http, server.base_url, source.size)
    started = time.monotonic()
    sock = stalled_patch(url, source, 3 * MiB)
    with sock:
        sock.settimeout(IDLE_TIMEOUT + 20)
        status, headers = read_answer(sock)  # the server ends it: the client never would
        waited = time.monotonic() - started
    assert status == 204
    offset = int(headers["upload-offset"])
    assert 0 < offset <= 3 * MiB
    assert waited >= IDLE_TIMEOUT * 0.75
    assert head_offset(http, url) == offset
    response = patch_file(http, url, source, offset)
    assert response.status_code == 204, response.text
    wait_until_ready(http, url)
    assert download_sha256(http, url) == (source.sha256, source.size)
    assert "no byte of the body for 1 s" in server.log_text()


# A process of its own holds the idle and the trickling connections (this one's select() takes
# no descriptor past 1023): it connects, says "ready", then sends the trickling ones a byte of a
# request's headers every half second until it is terminated.
HOSTILE = """
import socket, sys, time
host, port, idle, slow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
held = [socket.create_connection((host, port)) for _ in range(idle)]
trickled = [socket.create_connection((host, port)) for _ in range(slow)]
print("ready", flush=True)
request = b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: " + b"z" * 10000
position = 0
while True:
    time.sleep(0.5)
    for sock in list(trickled):
        try:
            sock.send(request[position:position + 1])
        except OSError:
            trickled.remove(sock)  # the server may close a client this slow
    position += 1
"""


@contextmanager
def hostile(url: str, idle: int, slow: int) -> Iterator[None]:
    """``idle`` connections that send nothing and ``slow`` that trickle their headers."""
    parts = urlsplit(url)
    process = subprocess.Popen(
        [sys.executable, "-c", HOSTILE, str(parts.hostname), str(parts.port), str(idle), str(slow)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def cutting(
    url: str, source: Source, stop: threading.Event, http: httpx.Client
) -> Iterator[list[int]]:
    """A client that PATCHes from the offset HEAD gives and disconnects mid-body, every time;
    the offsets it saw."""
    seen: list[int] = []
    failures: list[BaseException] = []

    def cut_again_and_again() -> None:
        try:
            while not stop.is_set():
                offset = head_offset(http, url)
                seen.append(offset)
                RawPatch(url, source, offset, limit=512 * 1024, rate=16 * MiB).run()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=cut_again_and_again, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not failures, failures


def test_idle_connections_slowloris_and_cut_bodies_leave_others_served(
    servers: Servers, http: httpx.Client, source: Source
) -> None:
    server = servers.start(env=SERVER_ENV)
    ready = create_upload(http, server.base_url, 1000)
    with source.path.open("rb") as stream:
        first = stream.read(1000)
    done = http.patch(
        ready, content=first, headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT}
    )
    assert done.status_code == 204
    wait_until_ready(http, ready)
    status_url = ready.replace("/files/", "/api/uploads/")
    quiet = get_latencies(http, status_url, GETS)
    before = rss_kib(server.pid)

    cut_url = create_upload(http, server.base_url, source.size)
    stop = threading.Event()
    with ExitStack() as stack:
        stack.enter_context(hostile(server.base_url, idle=1000, slow=50))
        seen = stack.enter_context(cutting(cut_url, source, stop, http))
        time.sleep(1.0)
        loaded = get_latencies(http, status_url, GETS)
        during = rss_kib(server.pid)
    print(
        f"GET p99 quiet {p99_ms(quiet):.1f} ms; with 1000 idle connections, 50 slowloris and a "
        f"client cutting every PATCH: {p99_ms(loaded):.1f} ms; RSS {before // 1024} -> "
        f"{during // 1024} MiB"
    )
    assert during - before < 64 * 1024, (before, during)  # about 30 KiB a connection at most
    assert len(seen) >= 2
    assert seen == sorted(seen)  # the cut client's offset never went back
    offset = head_offset(http, cut_url)
    assert offset >= seen[-1]
    response = patch_file(http, cut_url, source, offset)
    assert response.status_code == 204, response.text
    wait_until_ready(http, cut_url)
    assert download_sha256(http, cut_url) == (source.sha256, source.size)


def test_a_client_slow_with_its_headers_is_answered_408_and_disconnected(
    servers: Servers, http: httpx.Client
) -> None:
    server = servers.start(env={"UPLOAD_HEADER_TIMEOUT": "1"})
    silent = connect(server.base_url)  # connects and never asks
    trickler = connect(server.base_url)  # slowloris: a byte of its headers now and then
    with silent, trickler:
        started = time.monotonic()
        for byte in b"GET ":
            trickler.send(bytes([byte]))
            time.sleep(0.2)
        for sock in (silent, trickler):
            sock.settimeout(30)
            status, _ = read_answer(sock)
            assert status == 408
            assert sock.recv(65536) == b""  # then closed
        assert time.monotonic() - started >= 0.75
        assert http.get(f"{server.base_url}/healthz").status_code == 200  # others are served
