"""A real nginx on a loopback port in front of server processes, configured with the repository's
``deploy/nginx/upload_service.conf`` unchanged: this module writes only the top level around it
(paths under the test's directory, the listening port and, for TLS, a self-signed certificate, the
upstream naming the replicas).

The access log records, for every request, which replica(s) nginx tried and what each answered.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.support import free_port, require_tool, wait_for_readyz

ROOT = Path(__file__).resolve().parents[2]
SHARED_CONF = ROOT / "deploy" / "nginx" / "upload_service.conf"

# One line per request; the upstream fields hold one entry per replica tried ("a, b" after a retry).
LOG_FORMAT = (
    "$request_method $request_uri $status [$upstream_addr] [$upstream_status] $upload_request_id"
)
_LOG_LINE = re.compile(
    r"(?P<method>\S+) (?P<uri>\S+) (?P<status>\d{3}) \[(?P<upstreams>[^\]]*)\] \[(?P<statuses>[^\]]*)\]"
    r" (?P<request_id>\S+)"
)


def nginx_binary() -> str:
    """nginx lives in /usr/sbin, which a non-root PATH may lack; otherwise ``require_tool``."""
    if shutil.which("nginx") is None and os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return require_tool("nginx")


@dataclass(frozen=True, slots=True)
class Access:
    """One line of nginx's access log."""

    method: str
    uri: str
    status: int
    upstreams: tuple[str, ...]  # host:port of every replica tried, in order
    upstream_statuses: tuple[str, ...]
    request_id: str  # the X-Request-Id nginx passed on (the client's, or its own)

    @classmethod
    def parse(cls, line: str) -> Access:
        match = _LOG_LINE.fullmatch(line)
        assert match is not None, f"unexpected access log line: {line!r}"
        return cls(
            method=match["method"],
            uri=match["uri"],
            status=int(match["status"]),
            upstreams=tuple(part.strip() for part in match["upstreams"].split(",")),
            upstream_statuses=tuple(part.strip() for part in match["statuses"].split(",")),
            request_id=match["request_id"],
        )


@dataclass(frozen=True, slots=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 (and ``localhost``), made with openssl."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificate:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(
            [
                require_tool("openssl"),
                *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ],
            check=True,
            capture_output=True,
        )
        return cls(cert=cert, key=key)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate only."""
        return ssl.create_default_context(cafile=str(self.cert))


def render_conf(
    directory: Path, port: int, upstreams: Sequence[str], tls: Certificate | None = None
) -> str:
    """The top-level nginx.conf of a test: everything under ``directory``, one worker, listening
    on 127.0.0.1 only (with TLS when given a certificate), the shared file included inside the
    ``server`` block as it is."""
    servers = "\n".join(
        # max_fails=0: nginx keeps trying a dead replica first in its turn, so every such request
        # exercises the retry of a refused connection on the other replica.
        f"        server {address} max_fails=0;"
        for address in upstreams
    )
    listen = f"listen 127.0.0.1:{port};"
    if tls is not None:
        listen = (
            f"listen 127.0.0.1:{port} ssl;\n"
            f"        ssl_certificate {tls.cert};\n"
            f"        ssl_certificate_key {tls.key};"
        )
    return f"""\
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    log_format replicas '{LOG_FORMAT}';
    access_log {directory}/access.log replicas;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;

    upstream upload_service {{
{servers}
    }}

    server {{
        {listen}
        include {SHARED_CONF};
    }}
}}
"""


class Nginx:
    """``nginx -c FILE -g 'daemon off;'`` as a child process, stopped by PID."""

    def __init__(
        self, directory: Path, upstreams: Sequence[str], tls: Certificate | None = None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.conf = directory / "nginx.conf"
        self.conf.write_text(render_conf(directory, self.port, upstreams, tls))
        self.error_log = directory / "error.log"
        self.access_log = directory / "access.log"
        argv = [
            nginx_binary(),
            *("-p", str(directory), "-e", str(self.error_log), "-c", str(self.conf)),
            *("-g", "daemon off;"),
        ]
        test = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
        if test.returncode != 0:
            pytest.fail(f"nginx rejects the configuration:\n{test.stderr}\n{self.conf.read_text()}")
        with (directory / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid = self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/readyz`` answers 200 through nginx (so at least one replica is reachable)."""
        verify = self.tls.client_context() if self.tls is not None else True
        wait_for_readyz(self.base_url, self.process, "nginx", self.errors, timeout, verify=verify)

    def errors(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def accesses(self) -> list[Access]:
        """Every request nginx has finished (it writes a line when the response is complete)."""
        try:
            lines = self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [Access.parse(line) for line in lines if line]

    def accesses_after(self, before: int, count: int, timeout: float = 10.0) -> list[Access]:
        """The ``count`` lines nginx writes after the first ``before``: waited for, since nginx
        writes a request's line only after the last byte of its answer went out, so a client can
        have its answer before the line is there."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.accesses()[before:]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def _workers(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                    found.append(int(entry.name))
        return found

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (fast shutdown: the master stops its workers); after ``grace`` seconds SIGKILL,
        the workers first (a killed master would leave them running)."""
        if not self.running:
            return
        workers = self._workers()
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
