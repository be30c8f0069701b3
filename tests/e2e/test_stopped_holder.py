"""Fencing with a holder that stops without dying: two replicas on one PostgreSQL database (the
PostgreSQL locker) and one shared data directory. Replica A is sent SIGSTOP in the middle of a
PATCH and stays stopped past its lock's ``UPLOAD_LOCK_DEAD_AFTER``; replica B is asked to append
meanwhile, with bytes that differ from A's, and A is then sent SIGCONT. None of A's bytes may land
after B's: the download is exactly what was acknowledged, in order.

What happens, and why it holds: a stopped process's kernel still answers TCP for it, so
PostgreSQL keeps A's session and its advisory lock; B's request asks A to let go (NOTIFY), waits
``UPLOAD_LOCK_TIMEOUT`` and answers 423, writing nothing. Once A runs again it hears the release
request (or finds its heartbeat late and its lease lost), makes what it received durable, commits
and lets go; only then does B get the lock, and it appends from the committed offset."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

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
    wait_until_ready,
)
from tests.postgres import new_database

pytestmark = pytest.mark.e2e

DEAD_AFTER = 2.0
STOPPED = DEAD_AFTER + 2.0  # seconds A stays stopped
B_PIECE = 4 * MiB


def test_a_replica_stopped_mid_patch_never_writes_after_the_next_holder(
    tmp_path: Path, http: httpx.Client, source: Source
) -> None:
    with new_database("stopped") as url:
        shared = tmp_path / "shared-data"
        env = {
            "UPLOAD_DATABASE_URL": url,
            "UPLOAD_LOCKER": "postgres",
            "UPLOAD_LOCK_DEAD_AFTER": str(DEAD_AFTER),
            "UPLOAD_LOCK_TIMEOUT": "1",
            "UPLOAD_CHECKPOINT_SECONDS": "0.25",
        }
        servers = Servers(tmp_path, env)
        stopped = False
        try:
            a = servers.start(shared)
            b = servers.start(shared)
            url_a = create_upload(http, a.base_url, source.size)
            url_b = b.base_url + httpx.URL(url_a).path
            patch = RawPatch(url_a, source, 0, rate=8 * MiB)
            patch.start()
            deadline = time.monotonic() + 30
            while head_offset(http, url_b) == 0:  # A has committed a checkpoint
                assert time.monotonic() < deadline, "no checkpoint within 30 s"
                time.sleep(0.05)
            os.kill(a.pid, signal.SIGSTOP)
            stopped = True
            time.sleep(STOPPED)

            # B is asked to append, with bytes unlike the source's, while A is stopped
            committed = head_offset(http, url_b)
            with source.path.open("rb") as stream:
                stream.seek(committed)
                theirs = bytes(byte ^ 0xFF for byte in stream.read(B_PIECE))
            during = http.patch(
                url_b,
                content=theirs,
                headers={**TUS, "Upload-Offset": str(committed), "Content-Type": OFFSET_CT},
            )
            assert during.status_code in (204, 409, 423), during.text
            took_over = during.status_code == 204

            os.kill(a.pid, signal.SIGCONT)
            stopped = False
            patch.interrupt()
            patch.join(timeout=60)
            assert not patch.is_alive()
            assert a.running  # stopped and resumed, never killed

            # whoever acknowledged what, B finishes the upload from the committed offset
            expected = hashlib.sha256()
            with source.path.open("rb") as stream:
                if took_over:
                    expected.update(stream.read(committed))
                    expected.update(theirs)
                    stream.seek(committed + len(theirs))
                offset = head_offset(http, url_b)
                if took_over:
                    assert offset == committed + len(theirs)  # A added nothing after B
                else:
                    assert offset >= committed
                    expected.update(stream.read(offset))
                stream.seek(offset)
                rest = stream.read()
            expected.update(rest)
            done = http.patch(
                url_b,
                content=rest,
                headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT},
            )
            assert done.status_code == 204, done.text
            wait_until_ready(http, url_b)
            assert download_sha256(http, url_b) == (expected.hexdigest(), source.size)
            print(
                f"B during the stop: {during.status_code}; A's request then ended: {patch.status}"
            )
        finally:
            if stopped:
                os.kill(a.pid, signal.SIGCONT)
            servers.stop_all()
