"""docker-compose.yml run by a real engine (tests/e2e/docker.py) through the test-only override
``tests/e2e/compose-host/compose.host.yml``: the replicas and nginx as the file defines them, on
the host's network, with the host's PostgreSQL and the test's S3 server.

Compose v1 (Debian's ``docker-compose``) merges an override's ``ports:`` into the file's and
cannot drop them, and refuses published ports on the host's network ("host" network_mode is
incompatible with port_bindings). So the stack runs on ``without_published_ports()``: the file as
it is but for ``ports:``, with the repository as the project directory (relative paths, ``build:``
and the mounted ``deploy/nginx/upload_service.conf`` resolve there as for the file itself).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.nginx import LOG_FORMAT
from tests.e2e.support import missing

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SITE = ROOT / "deploy" / "nginx" / "compose.conf"
HOST_DIR = Path(__file__).resolve().parent / "compose-host"
HOST_OVERRIDE = HOST_DIR / "compose.host.yml"
NGINX_DOCKERFILE = HOST_DIR / "nginx.Dockerfile"
NGINX_IMAGE = "upload-service-nginx:e2e"
# What compose interpolates from (and how it finds its files): none of a developer's values of
# these may reach the stack; the test's own come from its env file.
_NOT_PASSED = ("UPLOAD_", "POSTGRES_", "MINIO_", "E2E_", "COMPOSE_")


def compose_command() -> list[str]:
    """Debian's ``docker-compose``, or the Docker CLI's compose plugin; ``missing`` without."""
    found = shutil.which("docker-compose")
    if found is not None:
        return [found]
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if plugin.returncode == 0:
            return [docker, "compose"]
    missing("no docker-compose (apt-get install docker-compose) and no docker compose plugin")


def without_published_ports(directory: Path) -> Path:
    """``docker-compose.yml`` with no service's ``ports:`` and nothing else changed, written to
    ``directory`` (YAML's anchors and merge keys resolved, which compose does too)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    for service in data["services"].values():
        service.pop("ports", None)
    path = directory / "docker-compose.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def site_conf(replica_ports: Mapping[str, int], port: int) -> str:
    """``deploy/nginx/compose.conf`` for the host's network: the upstream names each replica
    service by its loopback port (its other parameters kept), nginx listens on 127.0.0.1:``port``
    and logs every request to its stdout with the replicas it tried (tests/e2e/nginx.py's
    format, which ``Access.parse`` reads)."""
    text = COMPOSE_SITE.read_text()
    for service, replica_port in replica_ports.items():
        text, count = re.subn(
            rf"^(\s*server\s+){re.escape(service)}:\d+\b",
            rf"\g<1>127.0.0.1:{replica_port}",
            text,
            flags=re.MULTILINE,
        )
        assert count == 1, f"compose.conf names {service} {count} times"
    text, count = re.subn(
        r"^(\s*)listen\s+\d+;",
        rf"\g<1>listen 127.0.0.1:{port};\n\g<1>access_log /dev/stdout replicas;",
        text,
        flags=re.MULTILINE,
    )
    assert count == 1, "compose.conf has no single `listen PORT;`"
    return f"log_format replicas '{LOG_FORMAT}';\n\n{text}"


def write_env_file(path: Path, values: Mapping[str, str]) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


@dataclass(frozen=True)
class Compose:
    """One compose project: ``command`` (docker-compose, or docker compose) on ``files`` with
    the variables of ``env_file`` only, the repository as the project directory."""

    command: Sequence[str]
    project: str
    files: Sequence[Path]
    env_file: Path

    def run(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            *self.command,
            *("--project-name", self.project, "--project-directory", str(ROOT)),
            *("--env-file", str(self.env_file)),
            *(option for path in self.files for option in ("--file", str(path))),
            *args,
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=environment(),
            cwd=ROOT,
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                f"\n{done.stderr[-3000:]}"
            )
        return done

    def container_id(self, service: str) -> str:
        ids = self.run("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]


def environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(_NOT_PASSED)}
