"""PostgreSQL itself stopped for five seconds in the middle of uploads, and started again: a
private PostgreSQL server of this test's own (``initdb`` into a temporary directory, run as the
``postgres`` user on a free loopback port), so that stopping it disturbs no other test. Meanwhile
the service answers 503 with ``Retry-After`` (a PATCH whose commit cannot be made answers so too,
or 409 once its lock went with the database's session), nothing acknowledged is lost, and once
PostgreSQL is back the service recovers without a restart: the upload resumes and ends intact."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import (
    MiB,
    RawPatch,
    Servers,
    Source,
    attach_log_on_failure,
    create_upload,
    download_sha256,
    free_port,
    missing,
    patch_file,
    wait_until_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.solo]

OUTAGE = 5.0


class PrivatePostgres:
    """A PostgreSQL server on 127.0.0.1:``port`` with its data in ``data``, run as ``postgres``."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not binaries or os.geteuid() != 0 or shutil.which("runuser") is None:
            missing("a private PostgreSQL needs Debian's postgresql, runuser and root")
        self._bin = Path(binaries[-1]).parent
        # under /tmp itself: pytest's directories are root's alone, and postgres must reach it
        self.root = Path(tempfile.mkdtemp(prefix="upload-service-pg-"))
        self.data = self.root / "data"
        self.data.mkdir()
        for path in (self.root, self.data):
            shutil.chown(path, "postgres", "postgres")
        self.port = free_port()
        self.log = self.root / "postgres.log"
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self.process: subprocess.Popen[bytes] | None = None

    def _run(self, argv: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self._bin / argv[0]), *argv[1:]],
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "runuser", "-u", "postgres", "--", str(self._bin / "postgres"),
                    "-D", str(self.data), "-p", str(self.port), "-k", str(self.data),
                    "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run(
            [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        ).returncode:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "PostgreSQL did not start within 60 s"
            time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster, by PID: every session ends at once)."""
        if self.process is not None and self.process.poll() is None:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)
            self.process.wait(timeout=60)
        self.process = None


@pytest.fixture
def postgres(request: pytest.FixtureRequest) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    attach_log_on_failure(request.node, "private PostgreSQL log", server.log)
    try:
        server.start()
        yield server
    finally:
        server.stop()  # (a failing test's report has read the log by now)
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def server_database() -> dict[str, str]:
    return {}  # the test's own PostgreSQL, set below


def test_postgres_stopped_for_5_s_mid_upload_is_503_then_recovers_without_a_restart(
    servers: Servers, http: httpx.Client, source: Source, postgres: PrivatePostgres
) -> None:
    server = servers.start(
        env={
            "UPLOAD_DATABASE_URL": postgres.url,
            "UPLOAD_LOCKER": "postgres",
            "UPLOAD_CHECKPOINT_SECONDS": "0.25",
        }
    )
    url = create_upload(http, server.base_url, source.size)
    patch = RawPatch(url, source, 0, rate=16 * MiB, read_answer=True)
    patch.start()
    acknowledged = 0
    deadline = time.monotonic() + 30
    while acknowledged < 8 * MiB:  # some checkpoints are committed
        assert time.monotonic() < deadline
        acknowledged = int(
            http.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["Upload-Offset"]
        )
        time.sleep(0.05)

    postgres.stop()
    started = time.monotonic()
    answers: list[int] = []
    while time.monotonic() - started < OUTAGE:
        response = http.head(url, headers={"Tus-Resumable": "1.0.0"})
        answers.append(response.status_code)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"].isdigit()
        time.sleep(0.25)
    assert (http.get(f"{server.base_url}/readyz")).status_code == 503
    postgres.start()

    patch.join(timeout=60)
    assert not patch.is_alive()
    assert patch.status in (None, 204, 409, 503), patch.status  # the PATCH the outage cut
    deadline = time.monotonic() + 60
    while True:  # recovers by itself: no restart
        response = http.head(url, headers={"Tus-Resumable": "1.0.0"})
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "not recovered within 60 s"
        time.sleep(0.1)
    offset = int(response.headers["Upload-Offset"])
    assert offset >= acknowledged
    resumed = patch_file(http, url, source, offset)
    assert resumed.status_code == 204, resumed.text
    wait_until_ready(http, url)
    assert download_sha256(http, url) == (source.sha256, source.size)
    assert server.running  # the same process throughout
