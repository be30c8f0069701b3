"""Two ``upload-service serve`` replicas behind a real nginx, configured with the repository's
``deploy/nginx/upload_service.conf``, sharing one database and one data directory.

Through nginx: a chunked upload whose PATCHes land on both replicas assembles byte for byte; a
replica killed with SIGKILL mid-PATCH costs only that request, and the upload resumes on the other
one; PATCHes racing on both replicas never interleave. No request but the one the kill cut gets a
5xx: nginx retries a refused connection on the other replica, and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.e2e.nginx import Access, Nginx, nginx_binary
from tests.e2e.support import (
    HTTP_TIMEOUT,
    OFFSET_CT,
    TUS,
    MiB,
    RawPatch,
    ServerProcess,
    Servers,
    Source,
    attach_log_on_failure,
    create_upload,
    download_sha256,
    head_offset,
    patch_range,
    serve_command,
    sha256_file,
    stored_file,
    upload_id_of,
    write_random_file,
)
from tests.postgres import (
    create_database,
    drop_database,
    new_database_name,
    require_postgres,
    sqlalchemy_url,
)

pytestmark = pytest.mark.e2e

BIG_SIZE = 300 * MiB + 54_321  # not a multiple of CHUNK: the last chunk is short
CHUNK = 20 * MiB
# The kill lands while the body streams at this pace, after at least one acknowledged checkpoint.
SLOW = 8 * MiB
SERVER_ENV = {"UPLOAD_CHECKPOINT_SECONDS": "0.25"}
RACE_ROUNDS = 6
RACE_SIZE = 4 * MiB
RACERS = 8


@pytest.fixture(params=["postgres", "sqlite"])
def replica_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment both replicas share: the data directory, the database, the locker.

    ``postgres``: as replicas on several hosts run, a PostgreSQL database of the test's own and
    the PostgreSQL locker (advisory locks, release requests by NOTIFY). ``sqlite``: replicas on
    one host, one SQLite file in the shared data directory and the file locker (flock).
    """
    data = tmp_path / "shared-data"
    if request.param == "sqlite":
        yield {
            "UPLOAD_DATA_DIR": str(data),
            "UPLOAD_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'uploads.db'}",
            "UPLOAD_LOCKER": "file",
        }
        return
    require_postgres()
    name = new_database_name("replicas")
    create_database(name)
    try:
        yield {
            "UPLOAD_DATA_DIR": str(data),
            "UPLOAD_DATABASE_URL": sqlalchemy_url(name),
            "UPLOAD_LOCKER": "postgres",
        }
    finally:
        drop_database(name)


@pytest.fixture
def server_database() -> dict[str, str]:
    """Nothing of its own: ``replica_env`` names each replica pair's database and locker."""
    return {}


@dataclass
class Replicas:
    nginx: Nginx
    servers: tuple[ServerProcess, ServerProcess]
    data_dir: Path

    @property
    def base_url(self) -> str:
        return self.nginx.base_url


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest,
    servers: Servers,
    replica_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Replicas]:
    nginx_binary()  # skip (or fail under CI=true) before anything starts
    data_dir = Path(replica_env["UPLOAD_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    migrate(replica_env, tmp_path / "migrate.log")  # as compose's one-shot service does
    env = {**replica_env, **SERVER_ENV}
    pair = (servers.start(data_dir, env=env), servers.start(data_dir, env=env))
    nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{server.port}" for server in pair])
    attach_log_on_failure(request.node, f"nginx error log (pid {nginx.pid})", nginx.error_log)
    attach_log_on_failure(request.node, "nginx access log", nginx.access_log)
    try:
        nginx.wait_ready()
        yield Replicas(nginx=nginx, servers=pair, data_dir=data_dir)
    finally:
        nginx.stop()


def migrate(env: Mapping[str, str], log: Path) -> None:
    """``upload-service migrate`` once, before the replicas (``serve`` migrates only SQLite, and two
    replicas starting at once must not race on the schema)."""
    command = [*serve_command()[:-1], "migrate"]  # the same entry point, another subcommand
    environment = {key: value for key, value in os.environ.items() if not key.startswith("UPLOAD_")}
    result = subprocess.run(
        command,
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=False,
        cwd=log.parent,  # not the repository, whose .env a developer may keep
    )
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"upload-service migrate failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    path = tmp_path_factory.mktemp("replicas-source") / "big.bin"
    write_random_file(path, BIG_SIZE)
    yield Source(path=path, size=BIG_SIZE, sha256=sha256_file(path))
    path.unlink()


@dataclass
class Statuses:
    """Every response the test's clients received through nginx: (method, path, status)."""

    seen: list[tuple[str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, response: httpx.Response) -> None:
        with self._lock:
            self.seen.append((response.request.method, response.url.path, response.status_code))

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=HTTP_TIMEOUT, event_hooks={"response": [self.record]})

    def server_errors(self) -> list[tuple[str, str, int]]:
        return [entry for entry in self.seen if entry[2] >= 500]


@pytest.fixture
def statuses() -> Statuses:
    return Statuses()


@pytest.fixture
def client(statuses: Statuses) -> Iterator[httpx.Client]:
    with statuses.client() as http:
        yield http


def patches_logged(server: ServerProcess, upload_id: str) -> list[int]:
    """Statuses of the PATCHes of ``upload_id`` that ``server`` answered, from uvicorn's access log."""
    pattern = re.compile(rf'"PATCH /files/{re.escape(upload_id)} HTTP/1\.1" (\d{{3}})')
    return [int(status) for status in pattern.findall(server.log_text())]


def assert_no_server_errors(
    replicas: Replicas, statuses: Statuses, cut: Access | None = None
) -> None:
    """No 5xx for any request, seen by the clients or logged by nginx, except ``cut``."""
    assert statuses.server_errors() == [], statuses.server_errors()
    failed = [line for line in replicas.nginx.accesses() if line.status >= 500 and line != cut]
    assert failed == [], f"5xx through nginx: {failed}"


def upload_in_chunks(client: httpx.Client, url: str, source: Source, offset: int = 0) -> None:
    """A chunking tus client: PATCH ``CHUNK`` bytes at a time from ``offset``; on 409 or 423 (a
    broken request still holds the upload, or committed more) ask HEAD where to go on."""
    conflicts = 0
    while offset < source.size:
        end = min(offset + CHUNK, source.size)
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


def test_chunked_upload_lands_on_both_replicas_and_assembles(
    replicas: Replicas, big_source: Source, client: httpx.Client, statuses: Statuses
) -> None:
    url = create_upload(client, replicas.base_url, big_source.size)
    assert url.startswith(replicas.base_url), f"Location must point through the proxy: {url}"
    upload_in_chunks(client, url, big_source)

    upload_id = upload_id_of(url)
    logged = {server.name: patches_logged(server, upload_id) for server in replicas.servers}
    chunks = -(-big_source.size // CHUNK)
    assert sum(len(found) for found in logged.values()) == chunks, logged
    assert all(found for found in logged.values()), f"PATCHes did not reach both: {logged}"

    assert download_sha256(client, url) == (big_source.sha256, big_source.size)
    assert_no_server_errors(replicas, statuses)


def established(port: int) -> int:
    """TCP connections accepted on 127.0.0.1:``port`` that are open in both directions."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            count += 1
    return count


def replica_serving(replicas: Replicas, patch: RawPatch) -> ServerProcess:
    """The replica nginx passed the one PATCH in flight to: the only one with an open connection
    (a finished HEAD's connection may linger for a moment, so look until exactly one has)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert patch.is_alive(), f"the PATCH ended early: {patch.error}"
        busy = [server for server in replicas.servers if established(server.port) > 0]
        if len(busy) == 1:
            return busy[0]
        time.sleep(0.01)
    pytest.fail("could not tell which replica serves the PATCH")


def test_replica_killed_mid_patch_then_upload_resumes_through_nginx(
    replicas: Replicas, source: Source, client: httpx.Client, statuses: Statuses
) -> None:
    url = create_upload(client, replicas.base_url, source.size)
    patch = RawPatch(url, source, 0, rate=SLOW)  # to nginx, which streams it to one replica
    patch.start()
    acknowledged = 0
    try:
        deadline = time.monotonic() + 60
        while acknowledged == 0 or patch.sent < 4 * MiB:
            assert time.monotonic() < deadline, f"no checkpoint acknowledged; sent {patch.sent}"
            assert patch.is_alive(), f"the PATCH ended before the kill: {patch.error}"
            acknowledged = head_offset(client, url)
            time.sleep(0.02)
        victim = replica_serving(replicas, patch)
        victim.kill9()
    finally:
        patch.interrupt()
        patch.join(timeout=30)
    assert not patch.is_alive()
    survivor = next(server for server in replicas.servers if server is not victim)
    assert survivor.running

    offset = head_offset(client, url)
    context = f"acknowledged {acknowledged}, sent <= {patch.attempted}, offset after kill {offset}"
    assert acknowledged <= offset <= patch.attempted, context
    upload_in_chunks(client, url, source, offset)
    assert download_sha256(client, url) == (source.sha256, source.size)

    upload_path = f"/files/{upload_id_of(url)}"
    victim_address = f"127.0.0.1:{victim.port}"
    survivor_address = f"127.0.0.1:{survivor.port}"
    lines = replicas.nginx.accesses()
    cut = [line for line in lines if line.method == "PATCH" and line.upstreams == (victim_address,)]
    cut = [line for line in cut if line.status >= 500 or line.status == 499]
    assert len(cut) == 1, f"expected the one PATCH the kill cut: {cut}"
    after = lines[lines.index(cut[0]) + 1 :]
    # A request nginx tried on the dead replica first went on to the live one and succeeded.
    retried = [line for line in after if line.upstreams == (victim_address, survivor_address)]
    assert any(line.method == "PATCH" and line.uri == upload_path for line in retried), retried
    assert all(line.status < 500 for line in retried), retried
    assert_no_server_errors(replicas, statuses, cut=cut[0])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def patch_once(statuses: Statuses, url: str, offset: int, body: bytes) -> httpx.Response:
    """One PATCH on a client of its own, so racers reach nginx side by side."""
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT}
    with statuses.client() as own:
        return own.patch(url, headers=headers, content=body)


def test_racing_patches_on_both_replicas_never_interleave(
    replicas: Replicas, client: httpx.Client, statuses: Statuses
) -> None:
    for round_number in range(RACE_ROUNDS):
        url = create_upload(client, replicas.base_url, RACE_SIZE)
        upload_id = upload_id_of(url)
        bodies = [
            random.Random(round_number * 100 + racer).randbytes(RACE_SIZE)
            for racer in range(RACERS)
        ]
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(partial(patch_once, statuses, url, 0), bodies))
        answered = sorted(response.status_code for response in responses)
        assert set(answered) <= {204, 409, 423}, answered
        assert 204 in answered or 423 in answered, answered
        logged = {server.name: patches_logged(server, upload_id) for server in replicas.servers}
        assert all(found for found in logged.values()), f"the race missed a replica: {logged}"

        offset = head_offset(client, url)
        stored = stored_file(replicas.data_dir, upload_id).read_bytes()
        assert len(stored) >= offset
        # Every committed byte came from one racer: the first to hold the upload at offset 0.
        writers = [body for body in bodies if body[:offset] == stored[:offset]]
        assert offset == 0 or len(writers) == 1, f"committed bytes of {len(writers)} racers"
        if offset < RACE_SIZE:
            finisher = writers[0] if writers else bodies[0]
            response = patch_once(statuses, url, offset, finisher[offset:])
            assert response.status_code == 204, response.text
        digest, length = download_sha256(client, url)
        assert length == RACE_SIZE
        assert digest in {sha256(body) for body in bodies}
    assert_no_server_errors(replicas, statuses)
