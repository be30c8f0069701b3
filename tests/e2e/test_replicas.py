"""Two ``upload-service serve`` replicas behind a real nginx, configured with the repository's
``deploy/nginx/upload_service.conf``, sharing one database and where the bytes live: one data
directory, or (``s3``) a bucket, each replica then having a data directory of its own.

Through nginx: a chunked upload whose PATCHes land on both replicas assembles byte for byte; a
replica killed with SIGKILL mid-PATCH costs only that request, and the upload resumes on the other
one; PATCHes racing on both replicas never interleave; a DELETE leaves nothing stored. No request
but the one the kill cut gets a 5xx: nginx retries a refused connection on the other replica, and
nothing else. Every finished upload's stored bytes are checked where the store keeps them (on S3:
the object read back with boto3, no tail objects or multipart uploads left, and no upload bytes on
either replica's disk).
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

from tests import s3
from tests.draft_fields import append_fields, completeness, interop
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
    established,
    head_offset,
    patch_range,
    serve_command,
    sha256_file,
    stored_file,
    upload_id_of,
    upload_in_chunks,
    write_random_file,
)
from tests.e2e.test_ietf_draft import cut_creation
from tests.postgres import new_database

pytestmark = pytest.mark.e2e

BIG_SIZE = 300 * MiB + 54_321  # not a multiple of CHUNK: the last chunk is short
CHUNK = 20 * MiB
# The kill lands while the body streams at this pace, after at least one acknowledged checkpoint.
SLOW = 8 * MiB
SERVER_ENV = {"UPLOAD_CHECKPOINT_SECONDS": "0.25"}
RACE_ROUNDS = 6
RACE_SIZE = 4 * MiB
RACERS = 8
# The DELETE test's uploads: one left unfinished after two parts and a bit, one finished.
TERMINATED_PREFIX = 2 * 5 * MiB + 12_345
TERMINATED_SIZE = 7 * MiB + 321


# The S3 replicas: parts of 5 MiB (S3's smallest) so that even small uploads have several, and a
# largest upload that 10,000 of them hold (a larger one would raise the part size).
S3_PART_SIZE = 5 * MiB
S3_MAX_SIZE = 1024 * MiB
S3_PREFIX = "uploads/"


@dataclass(frozen=True, slots=True)
class Bucket:
    """The bucket the ``s3`` replicas keep upload bytes in, read back with plain boto3."""

    endpoint: str
    name: str
    prefix: str

    def object_key(self, upload_id: str) -> str:
        return self.prefix + upload_id

    def contents(self, upload_id: str) -> list[str]:
        """Everything the bucket holds of ``upload_id``: its object, its tail objects
        (``<object>.part.<n>``) and its multipart uploads not yet completed or aborted."""
        key = self.object_key(upload_id)
        objects = [
            found
            for found in s3.object_keys(self.endpoint, self.name, key)
            if found == key or found.startswith(f"{key}.")
        ]
        uploads = s3.multipart_uploads(self.endpoint, self.name, key)
        return objects + [
            f"multipart upload {ref} of {found}" for found, ref in uploads if found == key
        ]


@dataclass(frozen=True, slots=True)
class ReplicaEnv:
    """What the two replicas are configured with: ``env`` (both), a data directory each (the same
    one twice when they share it), and the bucket when the bytes live in S3."""

    env: dict[str, str]
    data_dirs: tuple[Path, Path]
    bucket: Bucket | None = None


@pytest.fixture(params=["postgres", "sqlite", "s3"])
def replica_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReplicaEnv]:
    """What the replicas share: where the bytes live, the database, the locker.

    ``postgres``: as replicas on several hosts run, a PostgreSQL database of the test's own and
    the PostgreSQL locker (advisory locks, release requests by NOTIFY), the bytes in a shared data
    directory (a shared file system). ``sqlite``: replicas on one host, one SQLite file in the
    shared data directory and the file locker (flock). ``s3``: as ``postgres``, but the bytes in a
    fresh bucket of the session's moto server and no shared disk at all: each replica has a data
    directory of its own (for its spool), as replicas on different hosts have.
    """
    shared = tmp_path / "shared-data"
    if request.param == "sqlite":
        yield ReplicaEnv(
            env={
                "UPLOAD_DATA_DIR": str(shared),
                "UPLOAD_DATABASE_URL": f"sqlite+aiosqlite:///{shared / 'uploads.db'}",
                "UPLOAD_LOCKER": "file",
            },
            data_dirs=(shared, shared),
        )
        return
    if request.param == "postgres":
        with new_database("replicas") as url:
            yield ReplicaEnv(
                env={
                    "UPLOAD_DATA_DIR": str(shared),
                    "UPLOAD_DATABASE_URL": url,
                    "UPLOAD_LOCKER": "postgres",
                },
                data_dirs=(shared, shared),
            )
        return
    endpoint: str = request.getfixturevalue("moto_endpoint")
    with new_database("replicas") as url:
        bucket = Bucket(endpoint, s3.new_bucket(endpoint), S3_PREFIX)
        try:
            yield ReplicaEnv(
                env={
                    "UPLOAD_DATABASE_URL": url,
                    "UPLOAD_LOCKER": "postgres",
                    "UPLOAD_STORAGE": "s3",
                    "UPLOAD_S3_BUCKET": bucket.name,
                    "UPLOAD_S3_ENDPOINT_URL": endpoint,
                    "UPLOAD_S3_REGION": s3.REGION,
                    "UPLOAD_S3_PREFIX": bucket.prefix,
                    "UPLOAD_S3_PART_SIZE": str(S3_PART_SIZE),
                    "UPLOAD_MAX_SIZE": str(S3_MAX_SIZE),
                    "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test",
                },
                data_dirs=(tmp_path / "replica-1-data", tmp_path / "replica-2-data"),
                bucket=bucket,
            )
        finally:
            s3.empty_bucket(endpoint, bucket.name)  # moto keeps every byte in its memory


@pytest.fixture
def server_database() -> dict[str, str]:
    """Nothing of its own: ``replica_env`` names each replica pair's database and locker."""
    return {}


@dataclass
class Replicas:
    nginx: Nginx
    servers: tuple[ServerProcess, ServerProcess]
    data_dirs: tuple[Path, Path]  # the servers', in order (the same one twice when shared)
    bucket: Bucket | None

    @property
    def base_url(self) -> str:
        return self.nginx.base_url


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest,
    servers: Servers,
    replica_env: ReplicaEnv,
    tmp_path: Path,
) -> Iterator[Replicas]:
    nginx_binary()  # skip (or fail under CI=true) before anything starts
    for data_dir in replica_env.data_dirs:
        data_dir.mkdir(parents=True, exist_ok=True)
    # As compose's one-shot service does (in the first replica's data directory, if it wants one).
    migrate(
        {"UPLOAD_DATA_DIR": str(replica_env.data_dirs[0]), **replica_env.env},
        tmp_path / "migrate.log",
    )
    env = {**replica_env.env, **SERVER_ENV}
    pair = (
        servers.start(replica_env.data_dirs[0], env=env),
        servers.start(replica_env.data_dirs[1], env=env),
    )
    nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{server.port}" for server in pair])
    attach_log_on_failure(request.node, f"nginx error log (pid {nginx.pid})", nginx.error_log)
    attach_log_on_failure(request.node, "nginx access log", nginx.access_log)
    try:
        nginx.wait_ready()
        yield Replicas(
            nginx=nginx, servers=pair, data_dirs=replica_env.data_dirs, bucket=replica_env.bucket
        )
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


def stored(replicas: Replicas, upload_id: str) -> list[str]:
    """Everything stored of ``upload_id``: on S3 what the bucket holds of it, else the files named
    after it under the shared data directory's ``files/``."""
    if replicas.bucket is not None:
        return replicas.bucket.contents(upload_id)
    files = replicas.data_dirs[0] / "files"
    return sorted(str(path.relative_to(files)) for path in files.rglob(f"{upload_id}*"))


def stored_bytes(replicas: Replicas, upload_id: str) -> bytes:
    """What the store holds of an upload no longer than one S3 part: its file in the shared data
    directory; on S3 its object once finished, else its first tail object (no part is uploaded
    before a part's worth of bytes arrived)."""
    if replicas.bucket is None:
        return stored_file(replicas.data_dirs[0], upload_id).read_bytes()
    bucket = replicas.bucket
    key = bucket.object_key(upload_id)
    found = bucket.contents(upload_id)
    source = key if key in found else f"{key}.part.1"
    assert source in found, f"neither {key} nor its first tail in the bucket: {found}"
    return s3.admin(bucket.endpoint).get_object(Bucket=bucket.name, Key=source)["Body"].read()


def open_files_under(pid: int, directory: Path) -> list[str]:
    """The files under ``directory`` that process ``pid`` holds open (unlinked ones too)."""
    root = f"{directory.resolve()}/"
    found = []
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith(root):
            found.append(target)
    return found


def assert_no_local_bytes(replicas: Replicas, idle_within: float = 10.0) -> None:
    """Replicas on S3 keep no upload bytes on their own disks: no file at all in their data
    directories (nothing under ``files/``, the spool empty; the database and the locks are
    PostgreSQL's). Spool files are unlinked as soon as they are made, so an empty directory says
    little: no running replica may hold one open either, once it is idle (``idle_within``)."""
    for server, data_dir in zip(replicas.servers, replicas.data_dirs, strict=True):
        spool = data_dir / "spool"
        assert spool.is_dir(), f"{server.name}: no spool directory {spool}"
        found = [str(path) for path in data_dir.rglob("*") if not path.is_dir()]
        assert found == [], f"{server.name} keeps files on its disk: {found}"
        deadline = time.monotonic() + idle_within
        while server.running and (held := open_files_under(server.pid, spool)):
            assert time.monotonic() < deadline, f"{server.name} keeps spool files open: {held}"
            time.sleep(0.05)


def assert_stored(replicas: Replicas, upload_id: str, sha256: str, size: int) -> None:
    """A finished upload's bytes are whole where the store keeps them. On S3: object
    ``<prefix><id>`` (read back with boto3), made of parts of ``S3_PART_SIZE`` (its ETag counts
    them), nothing else of the upload left in the bucket, no upload bytes on the replicas' disks."""
    if replicas.bucket is None:
        path = stored_file(replicas.data_dirs[0], upload_id)
        assert (sha256_file(path), path.stat().st_size) == (sha256, size), path
        return
    bucket = replicas.bucket
    key = bucket.object_key(upload_id)
    digest, length, etag = s3.object_sha256(bucket.endpoint, bucket.name, key)
    assert (digest, length) == (sha256, size), f"{key} in {bucket.name}"
    parts = -(-size // S3_PART_SIZE)
    assert etag.endswith(f"-{parts}"), (
        f"{key}: ETag {etag}, not a multipart object of {parts} parts"
    )
    assert bucket.contents(upload_id) == [key], "tail objects or multipart uploads left"
    assert_no_local_bytes(replicas)


def test_chunked_upload_lands_on_both_replicas_and_assembles(
    replicas: Replicas, big_source: Source, client: httpx.Client, statuses: Statuses
) -> None:
    url = create_upload(client, replicas.base_url, big_source.size)
    assert url.startswith(replicas.base_url), f"Location must point through the proxy: {url}"
    upload_in_chunks(client, url, big_source, chunk=CHUNK)

    upload_id = upload_id_of(url)
    logged = {server.name: patches_logged(server, upload_id) for server in replicas.servers}
    chunks = -(-big_source.size // CHUNK)
    assert sum(len(found) for found in logged.values()) == chunks, logged
    assert all(found for found in logged.values()), f"PATCHes did not reach both: {logged}"

    assert download_sha256(client, url) == (big_source.sha256, big_source.size)
    assert_stored(replicas, upload_id, big_source.sha256, big_source.size)
    assert_no_server_errors(replicas, statuses)


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
        if replicas.bucket is not None:  # the part being built is spooled (what a crash loses)
            spooled = open_files_under(victim.pid, victim.data_dir / "spool")
            assert spooled, f"{victim.name} spools nothing while it receives a PATCH"
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
    upload_in_chunks(client, url, source, offset, chunk=CHUNK)
    assert download_sha256(client, url) == (source.sha256, source.size)
    assert_stored(replicas, upload_id_of(url), source.sha256, source.size)

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
        committed = stored_bytes(replicas, upload_id)
        assert len(committed) >= offset
        # Every committed byte came from one racer: the first to hold the upload at offset 0.
        writers = [body for body in bodies if body[:offset] == committed[:offset]]
        assert offset == 0 or len(writers) == 1, f"committed bytes of {len(writers)} racers"
        if offset < RACE_SIZE:
            finisher = writers[0] if writers else bodies[0]
            response = patch_once(statuses, url, offset, finisher[offset:])
            assert response.status_code == 204, response.text
        digest, length = download_sha256(client, url)
        assert length == RACE_SIZE
        assert digest in {sha256(body) for body in bodies}
        assert_stored(replicas, upload_id, digest, length)
    assert_no_server_errors(replicas, statuses)


def test_termination_through_nginx_leaves_nothing_stored(
    replicas: Replicas, source: Source, client: httpx.Client, statuses: Statuses
) -> None:
    """DELETE through nginx of an unfinished upload (on S3: uploaded parts and a tail object) and
    of a finished one: whichever replica answers removes every byte the other one stored."""
    unfinished = create_upload(client, replicas.base_url, source.size)
    response = patch_range(client, unfinished, source, 0, TERMINATED_PREFIX)
    assert response.status_code == 204, response.text
    finished = create_upload(client, replicas.base_url, TERMINATED_SIZE)
    response = patch_range(client, finished, source, 0, TERMINATED_SIZE)
    assert response.status_code == 204, response.text
    expected = (sha256_file(source.path, TERMINATED_SIZE), TERMINATED_SIZE)
    assert download_sha256(client, finished) == expected
    assert_stored(replicas, upload_id_of(finished), *expected)

    unfinished_id = upload_id_of(unfinished)
    before = stored(replicas, unfinished_id)
    if replicas.bucket is not None:  # what the DELETE has to remove: parts and a tail
        bucket = replicas.bucket
        key = bucket.object_key(unfinished_id)
        full = TERMINATED_PREFIX // S3_PART_SIZE
        assert f"{key}.part.{full + 1}" in before, before
        uploads = s3.multipart_uploads(bucket.endpoint, bucket.name, key)
        assert [found for found, _ref in uploads] == [key], uploads
        parts = s3.part_sizes(bucket.endpoint, bucket.name, key, uploads[0][1])
        assert parts == dict.fromkeys(range(1, full + 1), S3_PART_SIZE), parts
    else:
        assert before, "the unfinished upload has no file"

    for url in (unfinished, finished):
        response = client.delete(url, headers=TUS)
        assert response.status_code == 204, response.text
        assert client.head(url, headers=TUS).status_code in (404, 410)
        assert stored(replicas, upload_id_of(url)) == [], f"left after DELETE {url}"
    if replicas.bucket is not None:
        assert s3.object_keys(replicas.bucket.endpoint, replicas.bucket.name) == []
        assert s3.multipart_uploads(replicas.bucket.endpoint, replicas.bucket.name) == []
        assert_no_local_bytes(replicas)
    assert_no_server_errors(replicas, statuses)


def test_the_ietf_draft_on_both_replicas_and_through_nginx(
    replicas: Replicas, tmp_path: Path
) -> None:
    """For every interop version, on the shared database and store:
    - a creation cut half-way on one replica: its 104 (straight from the replica: nginx does not
      pass 1xx answers on, see docs/ietf-draft.md) gave the URL, and the upload resumes through
      nginx on whichever replica it picks;
    - the whole file in one POST through nginx: the final answer has the URL and completes it;
    - the start of the file through nginx, then the rest appended through nginx."""
    path = tmp_path / "draft.bin"
    write_random_file(path, 24 * MiB + 77)
    size = path.stat().st_size
    source = Source(path=path, size=size, sha256=sha256_file(path))
    data = path.read_bytes()
    base = replicas.nginx.base_url
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        for version in (3, 5, 6, 8):
            url = cut_creation(replicas.servers[0].base_url, source, version)
            url = base + httpx.URL(url).path  # resumed through the proxy
            head = http.head(url, headers=interop(version))
            assert head.status_code == 204, head.text
            offset = int(head.headers["upload-offset"])
            assert 0 < offset <= size // 2
            patch = http.patch(
                url, headers=append_fields(version, offset, complete=True), content=data[offset:]
            )
            assert patch.status_code == 204, (version, patch.text)
            assert download_sha256(http, url) == (source.sha256, size)

            whole = http.post(
                f"{base}/files/",
                headers=interop(version) | completeness(version, True),
                content=data,
            )
            assert whole.status_code == 201, (version, whole.text)
            assert download_sha256(http, whole.headers["location"]) == (source.sha256, size)

            begun = http.post(
                f"{base}/files/",
                headers=interop(version) | completeness(version, False),
                content=data[: 5 * MiB],
            )
            assert begun.status_code == 201, (version, begun.text)
            assert begun.headers["upload-offset"] == str(5 * MiB)
            rest = http.patch(
                begun.headers["location"],
                headers=append_fields(version, 5 * MiB, complete=True),
                content=data[5 * MiB :],
            )
            assert rest.status_code == 204, (version, rest.text)
            assert download_sha256(http, begun.headers["location"]) == (source.sha256, size)
