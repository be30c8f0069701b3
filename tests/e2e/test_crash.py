"""kill -9 of the server in the middle of a PATCH, at several moments, on one upload.

After each kill the server restarts on the same data directory and port, and the offset HEAD reports
must never exceed the bytes the client sent, never fall below an offset already reported, and cover
only bytes that really are the source's. The upload then resumes and the download must match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.support import (
    KiB,
    MiB,
    RawPatch,
    Servers,
    Source,
    create_upload,
    download_sha256,
    head_offset,
    resume,
    sha256_file,
    stored_file,
    upload_id_of,
)

pytestmark = pytest.mark.e2e

SLOW = 8 * MiB  # bytes/s: slow enough to kill the server mid-request, fast enough for CI
# Fast, yet the rest of the file still takes over a second: the kill lands with up to a checkpoint
# interval of bytes written but not synced, and before the request could finish.
FAST = 128 * MiB
# Checkpoints every quarter second (instead of 2 s), so kills land both before and after some.
SERVER_ENV = {"UPLOAD_CHECKPOINT_SECONDS": "0.25"}


@dataclass(frozen=True, slots=True)
class Moment:
    name: str
    sent: int  # kill once the client has sent this many bytes of the body...
    acknowledged: bool = False  # ...and (if set) HEAD shows the offset advanced during the PATCH
    rate: float = SLOW


MOMENTS = (
    Moment("right after the body started, before any checkpoint", sent=64 * KiB),
    Moment("between checkpoints", sent=3 * MiB + 123_457),
    Moment("just after an acknowledged checkpoint", sent=0, acknowledged=True),
    Moment("mid-way through a fast PATCH (many bytes not yet synced)", sent=40 * MiB, rate=FAST),
)


def test_kill_9_during_patch_then_resume(
    servers: Servers, source: Source, http: httpx.Client
) -> None:
    server = servers.start(env=SERVER_ENV)
    url = create_upload(http, server.base_url, source.size)
    upload_id = upload_id_of(url)
    reported = 0  # the highest offset the server ever reported: it must never go back below it
    offsets: list[int] = []

    for moment in MOMENTS:
        start = head_offset(http, url)
        assert start >= reported
        patch = RawPatch(url, source, start, rate=moment.rate)
        patch.start()
        try:
            reported = max(reported, wait_for(moment, patch, http, url, start))
        finally:
            server.kill9()
            patch.interrupt()
            patch.join(timeout=30)
        assert not patch.is_alive()

        server = servers.restart(server, env=SERVER_ENV)
        offset = head_offset(http, url)
        context = f"killed {moment.name}: start {start}, sent <= {patch.attempted}, offset {offset}"
        assert reported <= offset <= start + patch.attempted, context
        stored = stored_file(server.data_dir, upload_id)
        assert stored.stat().st_size == offset, f"start-up should cut unsynced bytes; {context}"
        assert sha256_file(stored, offset) == sha256_file(source.path, offset), context
        reported = offset
        offsets.append(offset)

    print(f"offsets after each kill: {offsets}")
    assert offsets[-1] > 0, "no kill left durable progress behind; the test proved little"
    resume(http, url, source)
    digest, size = download_sha256(http, url)
    assert size == source.size
    assert digest == source.sha256


def wait_for(moment: Moment, patch: RawPatch, http: httpx.Client, url: str, start: int) -> int:
    """Wait until ``moment`` is reached, polling HEAD meanwhile; return the highest offset that
    HEAD reported (acknowledged, so durable by the protocol's promise)."""
    deadline = time.monotonic() + 60
    acknowledged = start
    while time.monotonic() < deadline:
        if patch.error is not None or not patch.is_alive():
            pytest.fail(f"the PATCH ended before the kill ({moment.name}): {patch.error}")
        acknowledged = max(acknowledged, head_offset(http, url))
        reached = patch.sent >= moment.sent
        if reached and (not moment.acknowledged or acknowledged > start):
            return acknowledged
        time.sleep(0.01)
    pytest.fail(f"never reached the moment {moment.name!r}: sent {patch.sent}")
