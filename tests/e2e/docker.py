"""A real Docker engine for the Docker tests, and what they build on it.

- The engine: the one already running (``docker info`` answers), or, as root with Debian's
  ``docker.io`` installed, a ``dockerd --bridge=none --iptables=false`` this session starts and
  stops by its PID at the end. No bridge network: every container here uses the host's network
  and listens on 127.0.0.1 only.
- The base image: no registry can be pulled from here, so ``scripts/docker-base`` makes one from
  Debian's packages with debootstrap (kept in the engine between runs).
- The wheelhouse: ``scripts/wheelhouse`` builds every dependency as a wheel on the host (kept in
  ``.cache`` per pyproject.toml), served on a loopback port to the build's pip through the
  Dockerfile's ``PIP_NO_INDEX``/``PIP_FIND_LINKS`` build arguments.

Without an engine (or the means to start one) the tests skip with the reason; under ``CI=true``
they fail (``missing``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import http_server, missing, require_tool
from tests.workers import alive, while_used

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
BASE_IMAGE = "upload-service-base:bookworm"
BASE_PYTHON = (3, 11)  # bookworm's python3: the wheelhouse's wheels are built for it
IMAGE = "upload-service:e2e"
# Every name this session gives an engine object starts with this, so its clean-up finds them.
PREFIX = f"upload-e2e-{os.getpid()}"


@dataclass
class Engine:
    """A Docker engine reachable with the ``docker`` client."""

    docker: str

    def run(
        self, *args: str, timeout: float = 300, check: bool = True, env: Mapping[str, str] = {}
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.docker, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **env},
        )
        if check and done.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done

    def answers(self) -> bool:
        return (
            self.run("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode
            == 0
        )

    def inspect(self, name: str) -> Any:
        return json.loads(self.run("inspect", name).stdout)[0]


def _dockerd_binary() -> str | None:
    for candidate in (shutil.which("dockerd"), "/usr/sbin/dockerd", "/usr/bin/dockerd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextmanager
def docker_engine(factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The running engine, or one started for the run (root only) and stopped by its PID when the
    last worker of the run that uses it is done (tests/workers.py): a worker that finishes early
    never stops it under another worker's test."""
    engine = Engine(require_tool("docker"))
    log = factory.mktemp("dockerd") / "dockerd.log"
    with while_used(factory, "docker-engine", lambda: _start_dockerd(engine, log), _stop_dockerd):
        yield engine


# The dockerd processes this worker started, kept until they are stopped and reaped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _start_dockerd(engine: Engine, log: Path) -> dict[str, Any] | None:
    """None if an engine answers already (not ours to stop); else start ``dockerd`` and say its PID."""
    if engine.answers():
        return None
    dockerd = _dockerd_binary()
    if dockerd is None:
        missing("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        missing("no Docker engine answers, and only root can start dockerd here")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [dockerd, "--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    deadline = time.monotonic() + 60
    while not engine.answers():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_dockerd({"pid": process.pid})
            pytest.fail(f"dockerd did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return {"pid": process.pid}


def _stop_dockerd(started: dict[str, Any]) -> None:
    """SIGTERM to the dockerd of ``started`` (perhaps another worker's child), then SIGKILL if it
    has not exited within 30 s."""
    pid = int(started["pid"])
    for signal_number, seconds in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, signal_number)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + seconds
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pid):
            break
    # our own child: reap it (another worker's is reaped by its parent or by init)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=10)


def base_image(engine: Engine) -> str:
    """The local Debian base image (made once by ``scripts/docker-base``, then kept)."""
    if engine.run("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        missing(f"no image {BASE_IMAGE}, and making it needs root and debootstrap")
    run_script("docker-base", BASE_IMAGE)
    return BASE_IMAGE


def run_script(name: str, *args: str) -> None:
    """``scripts/NAME ARGS``; its output in the failure when it fails."""
    done = subprocess.run(
        [str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/{name} failed:\n{done.stdout}\n{done.stderr}")


def wheelhouse() -> Path:
    """Every wheel the image needs, built with the host's .venv (kept per pyproject.toml)."""
    if sys.version_info[:2] != BASE_PYTHON:
        missing(
            f"the wheelhouse is built by this Python ({sys.version_info[0]}.{sys.version_info[1]}),"
            f" the base image runs Python {BASE_PYTHON[0]}.{BASE_PYTHON[1]}"
        )
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    directory = ROOT / ".cache" / f"wheelhouse-{key}"
    stamp = directory / ".complete"
    if not stamp.exists():
        shutil.rmtree(directory, ignore_errors=True)
        run_script("wheelhouse", str(directory))
        stamp.touch()
    return directory


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def served_directory(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (pip's ``--find-links`` reads its listing), on a port
    chosen by its path when that one is free: the URL is a build argument, and the engine's
    layer cache (which keys every ``RUN`` on the build arguments' values) then serves a build
    whose inputs have not changed since the last one."""
    preferred = 20000 + int(hashlib.sha256(str(directory).encode()).hexdigest(), 16) % 10000
    handler = functools.partial(_QuietFiles, directory=str(directory))
    with http_server(handler, "files", port=preferred) as port:
        yield f"http://127.0.0.1:{port}/"


@dataclass(frozen=True, slots=True)
class Build:
    image: str
    seconds: float
    size: int  # bytes, as the engine reports the image


def build_image(
    engine: Engine,
    tag: str,
    log: Path,
    *,
    base: str,
    wheels: Path | None = None,
    context: Path = ROOT,
    dockerfile: Path | None = None,
    build_args: Mapping[str, str] = {},
) -> Build:
    """``docker build`` of ``context`` on ``base`` (the ``BASE_IMAGE`` build argument, with
    ``build_args`` beside it), with the host's network (apt reaches the machine's Debian mirror);
    given ``wheels``, the build's pip reads only those. The output goes to ``log``."""
    with ExitStack() as stack:
        arguments = {"BASE_IMAGE": base}
        if wheels is not None:
            links = stack.enter_context(served_directory(wheels))
            arguments.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=links)
        arguments.update(build_args)
        started = time.monotonic()
        done = engine.run(
            "build",
            "--network",
            "host",
            "--tag",
            tag,
            *(
                option
                for key, value in arguments.items()
                for option in ("--build-arg", f"{key}={value}")
            ),
            *(("--file", str(dockerfile)) if dockerfile is not None else ()),
            str(context),
            timeout=1200,
            check=False,
            env={"DOCKER_BUILDKIT": "0"},  # the engine here (20.10) has no BuildKit plugin
        )
        seconds = time.monotonic() - started
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        pytest.fail(f"docker build of {tag} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    return Build(image=tag, seconds=seconds, size=size)


def record(name: str, values: Mapping[str, object]) -> None:
    """Keep measurements in ``artifacts/docker.json`` (the image size, build and start times)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "docker.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data[name] = dict(values)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def unique(kind: str) -> str:
    return f"{PREFIX}-{kind}-{uuid.uuid4().hex[:8]}"


# The socket inodes of the container's processes, then the kernel's TCP tables (tcp6 may be absent).
_SOCKETS = (
    'for fd in /proc/[0-9]*/fd/*; do readlink "$fd"; done 2>/dev/null; echo --;'
    " cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; exit 0"
)


def _address(field: str) -> str:
    """``/proc/net/tcp``'s ``HEX-ADDRESS:HEX-PORT`` (the address in host byte order, 32 bits at
    a time) as ``address:port``."""
    address, port = field.split(":")
    raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, raw)}:{int(port, 16)}"


@dataclass
class Container:
    """A container of the test's, run detached with the host's network."""

    engine: Engine
    name: str

    def state(self) -> Any:
        return self.engine.inspect(self.name)["State"]

    def wait_healthy(self, timeout: float = 120.0) -> float:
        """Seconds from the container's start until Docker calls it healthy."""
        started = time.monotonic()
        while True:
            state = self.state()
            status = state.get("Health", {}).get("Status")
            if status == "healthy":
                return time.monotonic() - started
            if not state["Running"]:
                pytest.fail(f"{self.name} exited ({state['ExitCode']}):\n{self.logs()}")
            if time.monotonic() - started > timeout:
                pytest.fail(f"{self.name} is {status} after {timeout}s:\n{self.logs()}")
            time.sleep(0.1)

    def listening(self) -> set[str]:
        """``address:port`` of every TCP socket the container's processes listen on. Read inside
        the container (``docker exec`` as its user, who may read its processes' descriptors);
        on the host's network its /proc/net/tcp is the host's."""
        out = self.engine.run("exec", self.name, "sh", "-c", _SOCKETS).stdout
        links, _, tables = out.partition("--\n")
        inodes = {link[8:-1] for link in links.split() if link.startswith("socket:[")}
        return {
            _address(fields[1])
            for fields in (line.split() for line in tables.splitlines())
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes  # 0A: LISTEN
        }

    def logs(self) -> str:
        done = self.engine.run("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-6000:]

    def stop(self, timeout: int = 10) -> float:
        """``docker stop`` (SIGTERM, then SIGKILL after ``timeout``); returns the seconds taken."""
        started = time.monotonic()
        self.engine.run("stop", "--time", str(timeout), self.name, timeout=timeout + 60)
        return time.monotonic() - started


@dataclass
class Docker:
    """The engine for one test, which removes every container and volume the test made."""

    engine: Engine
    containers: list[Container] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        name = unique("data")
        self.engine.run("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(
        self,
        image: str,
        *,
        env: Mapping[str, str],
        volumes: Mapping[str, str] = {},
        args: Sequence[str] = (),
        command: Sequence[str] = (),
    ) -> Container:
        """``docker run -d`` with the host's network; the health check every second (the image's
        own command, tried more often than in production) so a test sees health promptly."""
        container = Container(self.engine, unique("run"))
        options = ["--name", container.name, "--network", "host", "--health-interval", "1s"]
        for key, value in env.items():
            options += ["--env", f"{key}={value}"]
        for source, target in volumes.items():
            options += ["--volume", f"{source}:{target}"]
        self.engine.run("run", "--detach", *options, *args, image, *command)
        self.containers.append(container)
        return container

    def clean(self) -> None:
        for container in self.containers:
            self.engine.run("rm", "--force", "--volumes", container.name, check=False)
        for volume in self.volumes:
            self.engine.run("volume", "rm", "--force", volume, check=False)
