"""The servers under test: how each one is started, found ready and stopped (always by PID).

Every measurement gets a fresh process on a free 127.0.0.1 port with an empty data directory, so
peak memory and CPU counters belong to that measurement alone; the data directory is deleted after.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from bench import procfs

if TYPE_CHECKING:
    from bench.s3 import S3Target


class Role(Enum):
    OURS = "ours"
    PEER = "peer"
    FLOOR = "floor"
    HELPER = "helper"  # not measured: what a measured server needs (moto's S3 for ours-s3)


class ServerError(Exception):
    """A server did not start, did not get ready, or died."""


class StartError(ServerError):
    """A server did not start or did not get ready."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    key: str  # the name on the command line (--servers)
    label: str  # the name in the table
    role: Role
    argv: tuple[str, ...]  # "{port}" and "{data}" are filled in at start
    version: str
    files_path: str = "/files/"  # where POST creates uploads
    ready_path: str = "/healthz"
    probe_path: str = "/healthz"  # the trivial GET of the latency scenario
    env: Mapping[str, str] = field(default_factory=dict)
    env_drop_prefix: str | tuple[str, ...] = ""  # variables with this prefix are not passed on
    postgres: bool = False  # gets a fresh PostgreSQL database per measurement (UPLOAD_DATABASE_URL)
    s3: bool = False  # gets a moto server and a fresh bucket per measurement (UPLOAD_S3_*)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RunningServer:
    """``env`` adds settings for this process only (after the spec's); ``data_dir`` shares one
    directory between several processes (the caller deletes it), instead of a fresh one."""

    def __init__(
        self,
        spec: ServerSpec,
        workdir: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.port = free_port()
        self.data_dir = data_dir or workdir / f"data-{spec.key}-{self.port}"
        self.data_dir.mkdir(parents=True, exist_ok=data_dir is not None)
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{self.port}"
        argv = [part.format(port=self.port, data=self.data_dir) for part in spec.argv]
        environment = {
            key: value
            for key, value in os.environ.items()
            if not (spec.env_drop_prefix and key.startswith(spec.env_drop_prefix))
            and key not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONPATH")
        }
        environment.update(
            {key: value.format(data=self.data_dir) for key, value in spec.env.items()}
        )
        environment.update(env or {})
        with log_path.open("ab") as log:
            # cwd: the data directory, so no .env or node_modules of the repository is picked up
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.data_dir,
            )
        self.pid = self.process.pid
        self._tree: dict[int, int | None] = {}

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerError(
                    f"{self.spec.label} exited with {self.process.returncode} before it was "
                    f"ready:\n{self.log_tail()}"
                )
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", self.spec.ready_path)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self.remember_tree()
                    return
                last = f"HTTP {response.status}"
            except OSError as exc:
                last = repr(exc)
            finally:
                conn.close()
            time.sleep(0.05)
        raise ServerError(
            f"{self.spec.label} not ready after {timeout}s ({last}):\n{self.log_tail()}"
        )

    def remember_tree(self) -> None:
        """Note every descendant seen, so ``stop`` can end stragglers by their PIDs."""
        for pid in procfs.process_tree(self.pid):
            self._tree.setdefault(pid, procfs.start_time(pid))

    def check_alive(self) -> None:
        if not self.running:
            raise ServerError(
                f"{self.spec.label} died (exit {self.process.returncode}):\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL the process and every descendant noted so far (``remember_tree``) at once, as a
        crash would: no shutdown runs, what it held (flocks, database sessions) only the kernel
        lets go of. Returns once the process is reaped."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
        for pid, started in self._tree.items():
            if pid != self.pid and started is not None and procfs.start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM by PID, SIGKILL after ``grace``; then any descendant still there, by its PID."""
        if self.running:
            self.remember_tree()
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        for pid, started in self._tree.items():
            if pid != self.pid and started is not None and procfs.start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start(
    spec: ServerSpec,
    workdir: Path,
    log_path: Path,
    attempts: int = 3,
    *,
    env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
) -> RunningServer:
    """A ready server; a process that exits before it is ready (say, because another program took
    its free port meanwhile) is tried again on another port, up to ``attempts`` times. A shared
    ``data_dir`` is left in place when it fails."""
    for attempt in range(1, attempts + 1):
        server = RunningServer(spec, workdir, log_path, env=env, data_dir=data_dir)
        try:
            server.wait_ready()
        except ServerError as exc:
            exited = not server.running
            server.stop(grace=5)
            if data_dir is None:
                server.remove_data()
            if exited and attempt < attempts:
                continue
            raise StartError(str(exc)) from exc
        except BaseException:
            server.stop(grace=5)
            if data_dir is None:
                server.remove_data()
            raise
        return server
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start ``spec`` for one measurement: the measurement's own settings (its database,
    its bucket), scratch directory and log; a scenario that needs several processes starts them
    all from it."""

    spec: ServerSpec
    workdir: Path
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    s3: S3Target | None = None  # the moto server and bucket of an ``s3`` spec

    @property
    def helper_pids(self) -> tuple[int, ...]:
        """Processes the measured server works with on this machine (moto): their CPU is not
        other load."""
        return () if self.s3 is None else (self.s3.pid,)

    def start(
        self, *, env: Mapping[str, str] | None = None, data_dir: Path | None = None
    ) -> RunningServer:
        merged = {**self.env, **(env or {})}
        return start(self.spec, self.workdir, self.log_path, env=merged, data_dir=data_dir)
