"""docker-compose.yml, validated by compose itself and run by a real Docker engine through the
test-only override (tests/e2e/compose.py): the two replicas of the session's image and nginx
(Debian's, with the repository's ``deploy/nginx/upload_service.conf``), each on a loopback port
of the host's network, on a PostgreSQL database and a moto bucket of the test's own, migrated by
the compose ``migrate`` service and authenticated as compose configures it (an HS256 secret).

Through nginx: a 200 MiB upload whose chunks land on both replicas; ``docker-compose stop`` of the
replica a PATCH is streaming to, which commits what arrived, answers and exits 0; the rest through
nginx on the other replica; the download and the object in the bucket have the source's sha256.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from tests import s3
from tests.e2e.compose import (
    COMPOSE_FILE,
    HOST_OVERRIDE,
    Compose,
    compose_command,
    site_conf,
    without_published_ports,
    write_env_file,
)
from tests.e2e.docker import Build, Container, Docker, record, unique
from tests.e2e.nginx import Access
from tests.e2e.support import (
    HTTP_TIMEOUT,
    TUS,
    MiB,
    RawPatch,
    Source,
    create_upload,
    download_sha256,
    established,
    free_port,
    head_offset,
    patch_range,
    upload_id_of,
    upload_in_chunks,
)
from tests.postgres import (
    create_database,
    drop_database,
    new_database_name,
    require_postgres,
    sqlalchemy_url,
)
from upload_service.settings import S3Settings

pytestmark = [pytest.mark.e2e, pytest.mark.solo]

ROOT = COMPOSE_FILE.parent
SECRET = "compose-test-secret-of-at-least-32-bytes"
TOKEN = jwt.encode({"sub": "compose-test", "exp": int(time.time()) + 7200}, SECRET, "HS256")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPLICAS = ("replica-1", "replica-2")
CHUNK = 20 * MiB
CHUNKS_BEFORE_STOP = 4  # round robin: two on each replica
# The PATCH the stop cuts streams at this pace: the rest of the source would take about 15 s,
# the replica's graceful shutdown takes far less.
PACE = 8 * MiB
SENT_BEFORE_STOP = 8 * MiB
# The compose file sets no part size: the service's default (UPLOAD_MAX_SIZE keeps it).
PART_SIZE: int = S3Settings.model_fields["part_size"].default


def placeholder_variables() -> dict[str, str]:
    """The override's E2E_* variables, for validating it (no stack runs)."""
    return {
        "E2E_IMAGE": "upload-service:e2e",
        "E2E_NGINX_IMAGE": "upload-service-nginx:e2e",
        "E2E_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/uploads",
        "E2E_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "E2E_REPLICA_1_PORT": "8081",
        "E2E_REPLICA_2_PORT": "8082",
        "E2E_NGINX_PORT": "8080",
        "E2E_NGINX_SITE": str(ROOT / "deploy" / "nginx" / "compose.conf"),
    }


def test_compose_validates_the_file_and_the_file_with_the_test_override(tmp_path: Path) -> None:
    command = compose_command()
    alone = Compose(command, "upload-e2e-config", [COMPOSE_FILE], ROOT / ".env.example")
    alone.run("config", "-q")
    services = set(alone.run("config", "--services").stdout.split())
    assert services == {"postgres", "minio", "create-bucket", "migrate", *REPLICAS, "nginx"}

    env_file = write_env_file(tmp_path / "override.env", placeholder_variables())
    for base in (COMPOSE_FILE, without_published_ports(tmp_path)):
        Compose(command, "upload-e2e-config", [base, HOST_OVERRIDE], env_file).run("config", "-q")
    # what the override asks for must be there: it fails without its variables
    empty = write_env_file(tmp_path / "empty.env", {})
    refused = Compose(command, "upload-e2e-config", [COMPOSE_FILE, HOST_OVERRIDE], empty)
    assert refused.run("config", "-q", check=False).returncode != 0


@dataclass
class Stack:
    compose: Compose
    nginx_port: int
    replica_ports: dict[str, int]
    containers: dict[str, Container]  # replica-1, replica-2, nginx
    endpoint: str
    bucket: str
    seconds_to_healthy: float

    def accesses(self) -> list[Access]:
        """nginx's access log (its stdout): every request it finished, with the replicas tried."""
        nginx = self.containers["nginx"]
        lines = nginx.engine.run("logs", nginx.name).stdout.splitlines()
        return [Access.parse(line) for line in lines if line]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.replica_ports[service]}"


@pytest.fixture
def compose_cli() -> list[str]:
    """docker-compose (or the plugin), looked for before any image is built."""
    return compose_command()


@pytest.fixture
def stack(
    compose_cli: list[str],
    docker: Docker,
    service_image: Build,
    nginx_image: Build,
    moto_endpoint: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    require_postgres()
    ports: list[int] = []
    while len(ports) < 3:
        if (port := free_port()) not in ports:
            ports.append(port)
    replica_ports = dict(zip(REPLICAS, ports, strict=False))
    nginx_port = ports[2]
    site = tmp_path / "site.conf"
    site.write_text(site_conf(replica_ports, nginx_port))
    with ExitStack() as cleanup:
        database = new_database_name("compose")
        create_database(database)
        cleanup.callback(drop_database, database)
        bucket = s3.new_bucket(moto_endpoint)
        cleanup.callback(s3.empty_bucket, moto_endpoint, bucket)  # moto keeps every byte in memory
        env_file = write_env_file(
            tmp_path / "compose.env",
            {
                "E2E_IMAGE": service_image.image,
                "E2E_NGINX_IMAGE": nginx_image.image,
                "E2E_DATABASE_URL": sqlalchemy_url(database),
                "E2E_S3_ENDPOINT_URL": moto_endpoint,
                "E2E_REPLICA_1_PORT": str(replica_ports["replica-1"]),
                "E2E_REPLICA_2_PORT": str(replica_ports["replica-2"]),
                "E2E_NGINX_PORT": str(nginx_port),
                "E2E_NGINX_SITE": str(site),
                # docker-compose.yml's own variables (.env.example)
                "UPLOAD_AUTH_JWT_SECRET": SECRET,
                "UPLOAD_S3_BUCKET": bucket,
                "UPLOAD_TRUSTED_PROXIES": "127.0.0.1,::1",  # nginx, on the host's loopback
            },
        )
        files = [without_published_ports(tmp_path), HOST_OVERRIDE]
        compose = Compose(compose_cli, unique("compose"), files, env_file)
        cleanup.callback(down, compose)
        compose.run("run", "--rm", "--no-deps", "migrate")
        started = time.monotonic()
        up = compose.run(
            "up", "--detach", "--no-deps", "--no-build", *REPLICAS, "nginx", check=False
        )
        if up.returncode != 0:
            logs = compose.run("logs", "--no-color", check=False).stdout
            pytest.fail(f"docker-compose up failed:\n{up.stderr[-3000:]}\n{logs[-8000:]}")
        containers = {}
        for service in (*REPLICAS, "nginx"):
            containers[service] = Container(docker.engine, compose.container_id(service))
            docker.containers.append(containers[service])  # their logs in a failure's report
        for container in containers.values():
            container.wait_healthy()
        yield Stack(
            compose=compose,
            nginx_port=nginx_port,
            replica_ports=replica_ports,
            containers=containers,
            endpoint=moto_endpoint,
            bucket=bucket,
            seconds_to_healthy=time.monotonic() - started,
        )


def down(compose: Compose) -> None:
    """Every container, volume and network of the project removed (graceful stops first)."""
    done = compose.run(
        "down", "--volumes", "--remove-orphans", "--timeout", "45", timeout=600, check=False
    )
    assert done.returncode == 0, f"docker-compose down failed:\n{done.stderr}"


def serving(stack: Stack, patch: RawPatch) -> str:
    """The replica nginx streams the one PATCH in flight to: the only one with an open
    connection (a finished request's may linger for a moment, so look until exactly one has)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert patch.is_alive(), f"the PATCH ended early: {patch.error}"
        busy = [name for name, port in stack.replica_ports.items() if established(port) > 0]
        if len(busy) == 1:
            return busy[0]
        time.sleep(0.01)
    pytest.fail("could not tell which replica serves the PATCH")


def test_through_nginx_chunks_span_both_replicas_and_one_stopped_mid_patch_loses_nothing(
    stack: Stack, source: Source
) -> None:
    # on the host's network, each listens on its loopback port and nowhere else
    for name, port in {**stack.replica_ports, "nginx": stack.nginx_port}.items():
        assert stack.containers[name].listening() == {f"127.0.0.1:{port}"}, name

    started = time.monotonic()
    with httpx.Client(timeout=HTTP_TIMEOUT) as anonymous:
        refused = anonymous.post(f"{stack.base_url}/files/", headers={**TUS, "Upload-Length": "1"})
        assert refused.status_code == 401, "the stack runs without authentication"
    with httpx.Client(timeout=HTTP_TIMEOUT, headers=AUTH) as http:
        url = create_upload(http, stack.base_url, source.size)
        assert url.startswith(f"{stack.base_url}/files/"), f"Location not through nginx: {url}"
        path = f"/files/{upload_id_of(url)}"
        for number in range(CHUNKS_BEFORE_STOP):
            offset = number * CHUNK
            response = patch_range(http, url, source, offset, offset + CHUNK, upload_offset=offset)
            assert response.status_code == 204, f"{response.status_code}: {response.text}"
        offset = CHUNKS_BEFORE_STOP * CHUNK

        # docker-compose stop of the replica the next PATCH streams to, while it streams
        patch = RawPatch(url, source, offset, rate=PACE, read_answer=True, headers=AUTH)
        patch.start()
        deadline = time.monotonic() + 60
        while patch.sent < SENT_BEFORE_STOP and patch.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert patch.sent >= SENT_BEFORE_STOP, f"the PATCH sent only {patch.sent} bytes"
        victim = serving(stack, patch)
        survivor = next(name for name in REPLICAS if name != victim)
        stopping = time.monotonic()
        stack.compose.run("stop", victim, timeout=120)  # its stop_grace_period (40 s) applies
        stopped_in = time.monotonic() - stopping
        patch.join(timeout=60)
        assert not patch.is_alive()
        state = stack.containers[victim].state()
        assert not state["Running"]
        assert state["ExitCode"] == 0, f"{victim} exited {state['ExitCode']} (not gracefully)"
        assert not state["OOMKilled"]
        assert stack.containers[survivor].state()["Running"]
        assert patch.status == 204, f"the PATCH cut by the stop got {patch.status} ({patch.error})"
        committed = patch.answered_offset
        assert committed is not None
        assert offset < committed <= offset + patch.sent < source.size, (committed, patch.sent)

        # the rest through nginx, which now reaches only the survivor
        assert head_offset(http, url) == committed
        upload_in_chunks(http, url, source, committed, chunk=CHUNK)
        assert download_sha256(http, url) == (source.sha256, source.size)
    seconds = time.monotonic() - started

    digest, length, etag = s3.object_sha256(stack.endpoint, stack.bucket, upload_id_of(url))
    assert (digest, length) == (source.sha256, source.size), "the object in the bucket"
    parts = -(-source.size // PART_SIZE)
    assert etag.endswith(f"-{parts}"), f"ETag {etag}: not {parts} parts of {PART_SIZE} bytes"

    lines = stack.accesses()
    assert [line for line in lines if line.status >= 500] == [], "5xx through nginx"
    patches = [line for line in lines if line.method == "PATCH" and line.uri == path]
    rest = -(-(source.size - committed) // CHUNK)
    assert len(patches) == CHUNKS_BEFORE_STOP + 1 + rest, patches
    before, cut, after = (
        patches[:CHUNKS_BEFORE_STOP],
        patches[CHUNKS_BEFORE_STOP],
        patches[CHUNKS_BEFORE_STOP + 1 :],
    )
    landed = {line.upstreams[-1] for line in before}
    assert landed == {stack.address(name) for name in REPLICAS}, f"chunks landed on {landed}"
    assert (cut.upstreams, cut.status) == ((stack.address(victim),), 204), cut
    # nginx may try the stopped replica first (refused, so it goes on): the last one answered
    assert all(line.upstreams[-1] == stack.address(survivor) for line in after), after
    assert all(line.status == 204 for line in after), after

    record(
        "compose_stack",
        {
            "seconds_to_healthy": round(stack.seconds_to_healthy, 1),
            "stop_seconds": round(stopped_in, 1),
            "upload_seconds": round(seconds, 1),
            "committed_at_stop": committed,
        },
    )
    print(
        f"stack healthy in {stack.seconds_to_healthy:.1f} s, {victim} stopped in"
        f" {stopped_in:.1f} s at {committed} bytes, upload and download {seconds:.1f} s"
    )
