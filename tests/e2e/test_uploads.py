"""Whole uploads against a real server: tuspy in 50 MiB chunks, curl in one PATCH, and an upload
whose connection breaks midway and is resumed from the offset the server reports."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader.uploader import Uploader

from tests.e2e.support import (
    HTTP_TIMEOUT,
    OFFSET_CT,
    TUS,
    MiB,
    RawPatch,
    Servers,
    Source,
    create_partial,
    create_upload,
    download_sha256,
    head_offset,
    patch_range,
    require_tool,
    resume,
    sha256_file,
    stored_file,
    upload_id_of,
)

pytestmark = pytest.mark.e2e

CHUNK = 50 * MiB


def tuspy_upload(
    base_url: str, source: Source, chunk_size: int = CHUNK, *, upload_checksum: bool = False
) -> str:
    """Upload ``source`` with the tuspy client (with ``upload_checksum``, a sha1
    ``Upload-Checksum`` on every chunk); returns the upload URL."""
    client = TusClient(f"{base_url}/files/")
    # A stream we own: given a path, tuspy opens the file for every request and never closes it.
    with source.path.open("rb") as stream:
        uploader = client.uploader(
            file_stream=stream,
            chunk_size=chunk_size,
            metadata={"filename": source.path.name},
            upload_checksum=upload_checksum,
        )
        uploader.upload()
    url: object = uploader.url  # tuspy annotates it as None, then sets the URL
    assert isinstance(url, str)
    return url


def curl_patch_args(url: str, source: Source) -> list[str]:
    """curl arguments for one PATCH carrying the whole file from offset 0."""
    return [
        "-X",
        "PATCH",
        "-T",
        str(source.path),
        "-H",
        f"Content-Type: {OFFSET_CT}",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        "Upload-Offset: 0",
        url,
    ]


def curl_patch(url: str, source: Source) -> tuple[int, int, float]:
    """The whole file in one PATCH with curl; returns (status, Upload-Offset answered, bytes/s)."""
    curl = require_tool("curl")
    command = [
        curl,
        "--silent",
        "--show-error",
        "--include",
        "--output",
        "-",
        "--write-out",
        "\n%{http_code} %{speed_upload}",
        *curl_patch_args(url, source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
    status, speed = done.stdout.rsplit("\n", 1)[-1].split()
    answered = re.search(r"(?im)^upload-offset:\s*(\d+)", done.stdout)
    return int(status), int(answered[1]) if answered else -1, float(speed)


def test_tuspy_in_50_mib_chunks(servers: Servers, source: Source, http: httpx.Client) -> None:
    server = servers.start()
    started = time.monotonic()
    url = tuspy_upload(server.base_url, source)
    elapsed = time.monotonic() - started
    print(f"tuspy {source.size / MiB:.0f} MiB: {source.size / elapsed / 1e6:.0f} MB/s")

    assert head_offset(http, url) == source.size
    digest, size = download_sha256(http, url)
    assert size == source.size
    assert digest == source.sha256
    patches = re.findall(rf'"PATCH /files/{upload_id_of(url)} HTTP/1.1" 204', server.log_text())
    assert len(patches) == math.ceil(source.size / CHUNK), "tuspy should send one PATCH per chunk"


def _wrong_sha1(data: bytes) -> hashlib._Hash:
    return hashlib.sha1(data + b"!")


class MisdigestingUploader(Uploader):
    """tuspy, stating a sha1 of other bytes than it sends."""

    CHECKSUM_ALGORITHM_PAIR = ("sha1", _wrong_sha1)  # type: ignore[assignment]


def test_tuspy_with_checksums_in_50_mib_chunks(
    servers: Servers, source: Source, http: httpx.Client
) -> None:
    server = servers.start()
    started = time.monotonic()
    url = tuspy_upload(server.base_url, source, upload_checksum=True)
    elapsed = time.monotonic() - started
    print(f"tuspy sha1 {source.size / MiB:.0f} MiB: {source.size / elapsed / 1e6:.0f} MB/s")

    assert head_offset(http, url) == source.size
    digest, size = download_sha256(http, url)
    assert size == source.size
    assert digest == source.sha256
    patches = re.findall(rf'"PATCH /files/{upload_id_of(url)} HTTP/1.1" 204', server.log_text())
    assert len(patches) == math.ceil(source.size / CHUNK)

    # The same client with wrong digests is refused, chunk and all: the server really checks them.
    with source.path.open("rb") as stream:
        refused = MisdigestingUploader(
            file_stream=stream,
            client=TusClient(f"{server.base_url}/files/"),
            chunk_size=CHUNK,
            upload_checksum=True,
        )
        with pytest.raises(TusCommunicationError) as failure:
            refused.upload()
    assert failure.value.status_code == 460
    refused_url: object = refused.url
    assert isinstance(refused_url, str)
    assert head_offset(http, refused_url) == 0


def test_parallel_upload_by_concatenation(
    servers: Servers, source: Source, http: httpx.Client
) -> None:
    """Four partial uploads of the source's quarters sent at once, then a final upload."""
    server = servers.start()
    bounds = [source.size * quarter // 4 for quarter in range(5)]
    ranges = list(itertools.pairwise(bounds))
    part_urls = [create_partial(http, server.base_url, end - start) for start, end in ranges]

    def send(url: str, start: int, end: int) -> int:
        with httpx.Client(timeout=HTTP_TIMEOUT) as own:  # one connection per sender
            response = patch_range(own, url, source, start, end)
        assert response.status_code == 204, response.text
        return int(response.headers["Upload-Offset"])

    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        sending = [
            pool.submit(send, url, start, end)
            for url, (start, end) in zip(part_urls, ranges, strict=True)
        ]
        offsets = [future.result() for future in sending]
    assert offsets == [end - start for start, end in ranges]

    response = http.post(
        f"{server.base_url}/files/",
        headers={**TUS, "Upload-Concat": "final;" + " ".join(part_urls)},
    )
    assert response.status_code == 201, response.text
    final_url = str(httpx.URL(server.base_url).join(response.headers["Location"]))

    digest, size = download_sha256(http, final_url)
    assert size == source.size
    assert digest == source.sha256
    shown = http.get(f"{server.base_url}/api/uploads/{upload_id_of(final_url)}").json()
    assert shown["sha256"] == source.sha256
    assert shown["parts"] == [upload_id_of(url) for url in part_urls]


def test_curl_whole_file_in_one_patch(servers: Servers, source: Source, http: httpx.Client) -> None:
    require_tool("curl")
    server = servers.start()
    url = create_upload(http, server.base_url, source.size)

    status, answered, speed = curl_patch(url, source)
    print(f"curl one PATCH of {source.size / MiB:.0f} MiB: {speed / 1e6:.0f} MB/s")

    assert status == 204
    assert answered == source.size
    assert head_offset(http, url) == source.size
    digest, size = download_sha256(http, url)
    assert size == source.size
    assert digest == source.sha256


@pytest.mark.parametrize("close", ["fin", "reset"])
def test_broken_connection_then_resume(
    servers: Servers, source: Source, http: httpx.Client, close: str
) -> None:
    server = servers.start()
    url = create_upload(http, server.base_url, source.size)
    upload_id = upload_id_of(url)

    # Announce the whole file, send 48 MiB and a bit, then close the connection.
    broken = RawPatch(url, source, 0, limit=48 * MiB + 4_321, reset=close == "reset")
    broken.run()
    assert broken.error is None, broken.error
    offset = settled_offset(http, url)
    print(f"connection closed ({close}) after {broken.sent} bytes; the server kept {offset}")

    assert 0 < offset <= broken.sent
    assert sha256_file(stored_file(server.data_dir, upload_id), offset) == sha256_file(
        source.path, offset
    )
    resume(http, url, source)
    digest, size = download_sha256(http, url)
    assert size == source.size
    assert digest == source.sha256


def test_curl_cut_off_midway_then_resume(
    servers: Servers, source: Source, http: httpx.Client
) -> None:
    """A real client breaking off: curl, rate-limited, gives up after one second (exit 28)."""
    curl = require_tool("curl")
    server = servers.start()
    url = create_upload(http, server.base_url, source.size)
    command = [
        curl,
        "--silent",
        "--output",
        "/dev/null",
        "--write-out",
        "%{size_upload}",
        "--limit-rate",
        "32M",
        "--max-time",
        "1",
        *curl_patch_args(url, source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 28, f"curl should time out midway ({done.returncode}): {done.stderr}"
    sent = int(float(done.stdout.strip()))
    offset = settled_offset(http, url)
    print(f"curl broke off after sending {sent} bytes; the server kept {offset}")

    assert 0 < offset <= sent < source.size
    stored = stored_file(server.data_dir, upload_id_of(url))
    assert sha256_file(stored, offset) == sha256_file(source.path, offset)
    resume(http, url, source)
    assert download_sha256(http, url) == (source.sha256, source.size)


def settled_offset(http: httpx.Client, url: str, timeout: float = 20.0) -> int:
    """The offset once the server has noticed the break and committed what it kept: HEAD until it
    is above 0 and has not moved for half a second."""
    deadline = time.monotonic() + timeout
    offset, since = head_offset(http, url), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = head_offset(http, url)
        if current != offset:
            offset, since = current, time.monotonic()
        elif offset > 0 and time.monotonic() - since >= 0.5:
            return offset
    return offset


def test_curl_is_required_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``require_tool`` skips on a user's machine but fails under CI=true."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no tools at all
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_tool("curl")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool("curl")
