"""SIGTERM in the middle of a PATCH: the PATCH commits what arrived and answers, the server exits 0.

A slow client is streaming a large body when the server gets SIGTERM. The server must stop
accepting connections, have the PATCH make its bytes durable, commit them and answer 204 with that
offset, and exit with status 0 well within ``UPLOAD_SHUTDOWN_GRACE``. Restarted on the same data
directory it reports that offset, the stored bytes are exactly the source's prefix, and the client
resumes to a download with the right sha256. With ``--workers 2`` the supervisor passes the signal
on to the worker that holds the PATCH, which drains the same way.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.e2e.support import (
    HTTP_TIMEOUT,
    TUS,
    MiB,
    RawPatch,
    Servers,
    Source,
    create_upload,
    download_sha256,
    head_offset,
    patch_range,
    resume,
    serve_command,
    sha256_file,
    stored_file,
    upload_id_of,
)

pytestmark = pytest.mark.e2e

GRACE = 8  # UPLOAD_SHUTDOWN_GRACE: a drained PATCH answers in far less
SLOW = 4 * MiB  # bytes/s: the body takes far longer than the test
PIECE = 32 * 1024


def serve(workers: int) -> list[str]:
    return [*serve_command(), "--workers", str(workers)]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_mid_patch_commits_answers_and_exits_cleanly(
    servers: Servers, source: Source, http: httpx.Client, workers: int
) -> None:
    env = {"UPLOAD_SHUTDOWN_GRACE": str(GRACE)}
    server = servers.start(env=env, command=serve(workers))
    url = create_upload(http, server.base_url, source.size)
    patch = RawPatch(url, source, 0, rate=SLOW, piece=PIECE, read_answer=True)
    patch.start()
    deadline = time.monotonic() + 60
    while patch.sent < 5 * MiB + 12_345:
        assert patch.is_alive(), f"the PATCH ended early: {patch.error}"
        assert time.monotonic() < deadline, "the PATCH stalled"
        time.sleep(0.01)

    signalled = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    patch.join(timeout=GRACE + 10)
    assert not patch.is_alive()
    status = server.process.wait(timeout=GRACE + 10)
    took = time.monotonic() - signalled
    assert status == 0, f"exit status {status}"
    assert took < GRACE, f"shutdown took {took:.1f}s, the grace is {GRACE}s"
    assert "timeout graceful shutdown exceeded" not in server.log_text()

    assert patch.status == 204, f"answer {patch.status}, error {patch.error}"
    committed = patch.answered_offset
    assert committed is not None
    assert 0 < committed <= patch.sent

    server = servers.restart(server, env=env)
    assert head_offset(http, url) == committed
    stored = stored_file(server.data_dir, upload_id_of(url))
    assert stored.stat().st_size == committed
    assert sha256_file(stored, committed) == sha256_file(source.path, committed)
    resume(http, url, source)
    digest, size = download_sha256(http, url)
    assert (digest, size) == (source.sha256, source.size)


def test_no_connection_is_accepted_after_sigterm(
    servers: Servers, source: Source, http: httpx.Client
) -> None:
    server = servers.start(env={"UPLOAD_SHUTDOWN_GRACE": str(GRACE)})
    length = 32 * MiB
    url = create_upload(http, server.base_url, length)
    assert patch_range(http, url, source, 0, length).status_code == 204
    # A download read slowly keeps the server in its graceful wait after the signal.
    with httpx.Client(timeout=HTTP_TIMEOUT) as reader, reader.stream("GET", url) as download:
        assert download.status_code == 200
        pieces = download.iter_raw(64 * 1024)
        next(pieces)
        os.kill(server.pid, signal.SIGTERM)
        time.sleep(1.0)  # uvicorn notices the signal within a tenth of a second
        assert server.running
        with pytest.raises(httpx.ConnectError):
            httpx.head(url, headers=TUS, timeout=5)
    assert server.process.wait(timeout=GRACE + 10) == 0
