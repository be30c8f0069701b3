"""Fixtures for the end-to-end tests: the shared random source file and real server processes.

Every server a test starts is stopped by PID when the test ends, however it ends; a failing test's
report carries each server's log, and any log a test attached (``attach_log_on_failure``).
Uploaded bytes are removed after a passing test (the suite would otherwise leave gigabytes in
pytest's kept temporary directories); logs stay.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.compose import NGINX_DOCKERFILE, NGINX_IMAGE
from tests.e2e.docker import (
    IMAGE,
    Build,
    Docker,
    Engine,
    base_image,
    build_image,
    record,
    wheelhouse,
)
from tests.e2e.docker import docker_engine as start_docker_engine
from tests.e2e.support import (
    HTTP_TIMEOUT,
    REPORT_LOGS,
    MiB,
    Servers,
    Source,
    sha256_file,
    write_random_file,
)
from tests.postgres import new_database
from tests.workers import once_per_run

# At least 200 MiB, and not a multiple of any chunk or buffer size, so the tail is exercised too.
SOURCE_SIZE = 200 * MiB + 12_345
LOG_TAIL_LINES = 400

_SERVERS = pytest.StashKey[Servers]()
_FAILED = pytest.StashKey[bool]()
_DOCKER = pytest.StashKey[Docker]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
        servers = item.stash.get(_SERVERS, None)
        for server in servers.started if servers is not None else []:
            lines = server.log_text().splitlines()[-LOG_TAIL_LINES:]
            title = f"server log {server.name} (pid {server.pid}, port {server.port})"
            report.sections.append((title, "\n".join(lines)))
        docker = item.stash.get(_DOCKER, None)
        for container in docker.containers if docker is not None else []:
            report.sections.append((f"docker logs {container.name}", container.logs()))
        for title, path in item.stash.get(REPORT_LOGS, []):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = f"({path} was never written)"
            report.sections.append((title, "\n".join(text.splitlines()[-LOG_TAIL_LINES:])))
    return report


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """One random file for the whole session, made once and reused by every test."""
    path = tmp_path_factory.mktemp("e2e-source") / "source.bin"
    write_random_file(path, SOURCE_SIZE)
    return Source(path=path, size=SOURCE_SIZE, sha256=sha256_file(path))


@pytest.fixture(params=["sqlite", "postgres"])
def server_database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The database of the servers a test starts: the embedded default (SQLite in the data
    directory), or a PostgreSQL database of the test's own (with the PostgreSQL locker, as
    ``auto`` picks it), dropped after the servers stopped."""
    if request.param == "sqlite":
        yield {}
        return
    with new_database("e2e") as url:
        yield {"UPLOAD_DATABASE_URL": url}


@pytest.fixture
def servers(
    request: pytest.FixtureRequest, tmp_path: Path, server_database: dict[str, str]
) -> Iterator[Servers]:
    started = Servers(tmp_path, server_database)
    request.node.stash[_SERVERS] = started
    try:
        yield started
    finally:
        started.stop_all()
        if not request.node.stash.get(_FAILED, False):
            for server in started.started:
                shutil.rmtree(server.data_dir / "files", ignore_errors=True)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        yield client


# -- Docker (tests/e2e/docker.py) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with start_docker_engine(tmp_path_factory) as engine:
        yield engine


@pytest.fixture(scope="session")
def docker_base(docker_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The local base image, made (if the engine lacks it) by one worker of the run."""
    made = once_per_run(
        tmp_path_factory, "base-image", lambda: {"image": base_image(docker_engine)}
    )
    return str(made["image"])


@pytest.fixture(scope="session")
def service_image(
    docker_engine: Engine, docker_base: str, tmp_path_factory: pytest.TempPathFactory
) -> Build:
    """The repository's Dockerfile, built once a run on the local base image: by the first
    worker that needs it, the others waiting for it (tests/workers.py)."""

    def build() -> dict[str, Any]:
        log = tmp_path_factory.mktemp("docker-build") / "build.log"
        made = build_image(docker_engine, IMAGE, log, base=docker_base, wheels=wheelhouse())
        record("image", {"bytes": made.size, "build_seconds": round(made.seconds, 1)})
        return dataclasses.asdict(made)

    return Build(**once_per_run(tmp_path_factory, "service-image", build))


@pytest.fixture(scope="session")
def nginx_image(
    docker_engine: Engine, docker_base: str, tmp_path_factory: pytest.TempPathFactory
) -> Build:
    """Debian's nginx on the local base image (tests/e2e/compose-host/nginx.Dockerfile), for the
    compose stack in place of the official nginx image, which no registry here supplies; built
    once a session."""
    log = tmp_path_factory.mktemp("nginx-build") / "build.log"
    build = build_image(
        docker_engine,
        NGINX_IMAGE,
        log,
        base=docker_base,
        context=NGINX_DOCKERFILE.parent,
        dockerfile=NGINX_DOCKERFILE,
    )
    record("nginx_image", {"bytes": build.size, "build_seconds": round(build.seconds, 1)})
    return build


@pytest.fixture
def docker(request: pytest.FixtureRequest, docker_engine: Engine) -> Iterator[Docker]:
    """The engine for one test: its containers' logs go into a failing test's report, and its
    containers and volumes are removed when it ends."""
    made = Docker(docker_engine)
    request.node.stash[_DOCKER] = made
    try:
        yield made
    finally:
        made.clean()
