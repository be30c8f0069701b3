"""The IETF resumable-upload draft at the wire, with raw sockets against a real server: for every
interop version served, a plain POST of a whole file is cut off half-way; the 104 with
``Location`` has arrived before the cut; HEAD gives the durable offset; a PATCH of the rest
completes the upload; and the download is byte-identical."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.draft_fields import append_fields
from tests.e2e.support import (
    MiB,
    Servers,
    Source,
    download_sha256,
    upload_id_of,
    wait_until_ready,
)
from upload_service.tus.draft import INTEROP_VERSIONS

pytestmark = pytest.mark.e2e

VERSIONS = sorted(INTEROP_VERSIONS)


def creation_headers(version: int, size: int) -> str:
    """A whole-file POST's fields in ``version``: the completeness field that says this body
    ends the upload, and the length where the version defines it."""
    fields = [f"Upload-Draft-Interop-Version: {version}", f"Content-Length: {size}"]
    if version == 3:
        fields.append("Upload-Incomplete: ?0")
    else:
        fields.append("Upload-Complete: ?1")
    if version >= 6:
        fields.append(f"Upload-Length: {size}")
    return "\r\n".join(fields)


def read_interim(sock: socket.socket) -> tuple[str, dict[str, str]]:
    """The first answer's head on ``sock`` (status line and fields), read byte by byte so that
    nothing after it is consumed."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"the server closed after {head!r}"
        head += byte
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def cut_creation(base_url: str, source: Source, version: int) -> str:
    """POST the whole file, stop half-way, check that the 104 came with ``Location`` before any
    more was sent, and cut the connection (RST). Returns the upload's URL."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    half = source.size // 2
    try:
        sock.sendall(
            (
                f"POST /files/ HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"{creation_headers(version, source.size)}\r\n"
                "Content-Type: video/mp4\r\n\r\n"
            ).encode()
        )
        with source.path.open("rb") as file:
            sent = 0
            first = file.read(1 * MiB)
            sock.sendall(first)
            sent += len(first)
            status, fields = read_interim(sock)  # before the rest of the body is sent
            assert status == "HTTP/1.1 104 Upload Resumption Supported", status
            assert fields["upload-draft-interop-version"] == str(version)
            location = fields["location"]
            if version >= 6:
                assert "min-size=0" in fields["upload-limit"]
            while sent < half:
                piece = file.read(min(1 * MiB, half - sent))
                sock.sendall(piece)
                sent += len(piece)
        time.sleep(0.2)  # let the server read and write what was sent
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    return str(httpx.URL(base_url).join(location))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_cut_plain_post_resumes_from_its_104_location(
    servers: Servers, source: Source, http: httpx.Client, version: int
) -> None:
    server = servers.start()
    url = cut_creation(server.base_url, source, version)
    interop = {"Upload-Draft-Interop-Version": str(version)}

    head = http.head(url, headers=interop)
    assert head.status_code == 204, head.text
    assert head.headers["cache-control"] == "no-store"
    offset = int(head.headers["upload-offset"])
    assert 0 < offset <= source.size // 2
    if version == 3:
        assert head.headers["upload-incomplete"] == "?1"
    else:
        assert head.headers["upload-complete"] == "?0"
        assert head.headers["upload-length"] == str(source.size)

    rest = source.path.read_bytes()[offset:]
    fields = append_fields(version, offset, complete=True)
    patch = http.patch(url, headers=fields, content=rest)
    assert patch.status_code == 204, patch.text
    assert patch.headers["upload-offset"] == str(source.size)
    if version != 3:
        assert patch.headers["upload-complete"] == "?1"

    wait_until_ready(http, url)
    assert download_sha256(http, url) == (source.sha256, source.size)
    listed = http.get(f"{server.base_url}/api/uploads/{upload_id_of(url)}")
    assert listed.json()["metadata"]["filetype"] == "video/mp4"  # the POST's Content-Type


def test_an_upload_without_a_length_completes_at_its_bodys_end(
    servers: Servers, source: Source, http: httpx.Client, tmp_path: Path
) -> None:
    """A chunked POST with ``Upload-Complete: ?1`` and no length: the length is the body's."""
    server = servers.start()
    data = source.path.read_bytes()[: 3 * MiB + 5]

    def pieces() -> object:
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    created = http.post(
        f"{server.base_url}/files/",
        headers={"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"},
        content=pieces(),  # type: ignore[arg-type]
    )
    assert created.status_code == 201, created.text
    assert created.headers["upload-complete"] == "?1"
    assert created.headers["upload-offset"] == str(len(data))
    url = str(httpx.URL(server.base_url).join(created.headers["location"]))
    wait_until_ready(http, url)
    body = http.get(url)
    assert body.content == data


def first_answer(base_url: str, fields: str, body: bytes) -> str:
    """The status line of the first answer to a whole-file POST with ``fields``."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /files/ HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Upload-Draft-Interop-Version: 8\r\nUpload-Complete: ?1\r\n{fields}"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        status, _ = read_interim(sock)
    return status


@pytest.mark.parametrize(
    ("setting", "proxied", "interim"),
    [
        ("auto", False, True),
        ("auto", True, False),  # a proxy may not pass a 1xx on (nginx turns it into the answer)
        ("always", True, True),
        ("never", False, False),
    ],
)
def test_interim_responses_follow_the_setting_and_the_proxy(
    servers: Servers, setting: str, proxied: bool, interim: bool
) -> None:
    server = servers.start(env={"UPLOAD_INTERIM_RESPONSES": setting})
    fields = "X-Forwarded-For: 192.0.2.7\r\n" if proxied else ""
    status = first_answer(server.base_url, fields, b"0123456789")
    expected = "104 Upload Resumption Supported" if interim else "201 Created"
    assert status == f"HTTP/1.1 {expected}"
