"""Form uploads with real curl (``curl -F``) against a real server: several files and fields, a
body that streams into storage while it arrives and leaves nothing when curl dies midway, a bad
boundary, and the size, type and auth limits."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.e2e.support import (
    MiB,
    ServerProcess,
    Servers,
    require_tool,
    sha256_file,
    write_random_file,
)
from tests.file_samples import VIDEOS

pytestmark = pytest.mark.e2e

SECRET = "an-hs256-secret-of-at-least-32-bytes!"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def curl(*args: str, timeout: float = 120) -> tuple[int, Any]:
    """Run curl; returns the HTTP status and the JSON body."""
    result = subprocess.run(
        [require_tool("curl"), "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


def live_rows(server: ServerProcess) -> list[tuple[str, str]]:
    """(id, state) of every upload row that is not terminated, read from the server's SQLite."""
    with sqlite3.connect(f"file:{server.data_dir / 'uploads.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, state FROM uploads WHERE state != 'terminated'").fetchall()
    return [(str(upload_id), str(state)) for upload_id, state in rows]


def stored(server: ServerProcess) -> list[Path]:
    files = server.data_dir / "files"
    return sorted(files.iterdir()) if files.is_dir() else []


def test_curl_form_with_files_and_fields(servers: Servers, tmp_path: Path) -> None:
    server = servers.start()
    video, notes = tmp_path / "holiday.mp4", tmp_path / "notes.txt"
    write_random_file(video, 30 * MiB + 7)
    notes.write_text("été\n")
    status, uploads = curl(
        "-F", "title=Holiday 2026", "-F", "camera=x100",
        "-F", f"video=@{video};type=video/mp4", "-F", f"notes=@{notes}",
        f"{server.base_url}/api/uploads",
    )  # fmt: skip
    assert status == 201, uploads
    assert [upload["metadata"]["filename"] for upload in uploads] == ["holiday.mp4", "notes.txt"]
    first, second = uploads
    assert first["metadata"] == {
        "title": "Holiday 2026",
        "camera": "x100",
        "filename": "holiday.mp4",
        "filetype": "video/mp4",
    }
    assert second["metadata"]["filetype"] == "text/plain"  # curl types .txt itself
    for upload, path in ((first, video), (second, notes)):
        assert upload["state"] == "ready"
        assert upload["length"] == path.stat().st_size
        assert upload["sha256"] == sha256_file(path)
    downloaded = tmp_path / "downloaded"
    subprocess.run(
        [require_tool("curl"), "-sSf", "-o", str(downloaded), first["download_url"]], check=True
    )
    assert sha256_file(downloaded) == sha256_file(video)


def test_a_form_streams_into_storage_and_an_interrupted_one_leaves_nothing(
    servers: Servers, tmp_path: Path
) -> None:
    server = servers.start()
    video = tmp_path / "big.mp4"
    write_random_file(video, 64 * MiB)
    argv = [
        require_tool("curl"), "-sS", "--limit-rate", "8M", "-F", "title=t",
        "-F", f"video=@{video}", f"{server.base_url}/api/uploads",
    ]  # fmt: skip
    sending = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        growing: list[Path] = []
        while time.monotonic() < deadline and sending.poll() is None:
            growing = [path for path in stored(server) if path.stat().st_size > 4 * MiB]
            if growing:
                break
            time.sleep(0.05)
        # the part's bytes are in storage while curl is still sending: streamed, not spooled
        assert growing, "no stored file grew while the form was being sent"
        assert sending.poll() is None
        assert [state for _, state in live_rows(server)] == ["receiving"]
        os.kill(sending.pid, signal.SIGKILL)
    finally:
        sending.wait(timeout=30)
    deadline = time.monotonic() + 30
    while (live_rows(server) or stored(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_rows(server) == []  # terminated: nothing half-received is visible
    assert stored(server) == []


def test_curl_forms_meet_the_limits(servers: Servers, tmp_path: Path) -> None:
    server = servers.start(
        env={
            "UPLOAD_MAX_SIZE": str(2 * MiB),
            "UPLOAD_ALLOWED_TYPES": "video/*",
            "UPLOAD_AUTH_JWT_SECRET": SECRET,
        }
    )
    url = f"{server.base_url}/api/uploads"
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    auth = ("-H", f"Authorization: Bearer {token}")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(VIDEOS["video/mp4"] + os.urandom(100_000))
    large = tmp_path / "large.mp4"
    large.write_bytes(VIDEOS["video/mp4"] + os.urandom(3 * MiB))
    text = tmp_path / "readme.txt"
    text.write_text("not a video\n")

    status, body = curl("-F", f"f=@{clip}", url)
    assert status == 401, body
    status, body = curl(*auth, "-F", f"f=@{clip}", url)
    assert status == 201, body
    assert body[0]["owner"] == "jwt::alice"  # a token without iss
    assert body[0]["download_url"].split("?")[0].endswith(body[0]["id"])
    mine = httpx.get(f"{url}/{body[0]['id']}", headers={"Authorization": f"Bearer {token}"})
    assert mine.json()["sha256"] == sha256_file(clip)

    status, body = curl(*auth, "-F", f"f=@{large}", url)
    assert status == 413, body
    assert "maximum size" in body["error"]["message"]
    status, body = curl(*auth, "-F", f"f=@{text}", url)  # declared text/plain
    assert status == 415, body
    status, body = curl(*auth, "-F", f"f=@{text};type=video/mp4", url)  # sniffed
    assert status == 415, body
    status, body = curl(
        *auth, "-H", "Content-Type: multipart/form-data", "--data-binary", f"@{clip}", url
    )
    assert status == 400, body
    assert "boundary" in body["error"]["message"]
    status, body = curl(
        *auth, "-H", "Content-Type: multipart/form-data; boundary=xyz",
        "--data-binary", f"@{clip}", url,
    )  # fmt: skip
    assert status == 400, body
    assert "malformed" in body["error"]["message"]
    assert [state for _, state in live_rows(server)] == ["ready"]
    assert len(stored(server)) == 1
