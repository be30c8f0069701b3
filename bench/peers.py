"""The peer servers, installed into the benchmark's cache directory (never into the repository).

- ``@tus/server`` + ``@tus/file-store`` (the Node reference server) from npm into ``<cache>/node``;
- ``tuspyserver`` (a FastAPI router) from PyPI into its own venv ``<cache>/tuspyserver-venv``, with
  the same uvicorn, uvloop and httptools versions as our own venv, so only the app differs.

Versions are pinned so that runs on different days compare; an install that fails makes the peer
"unavailable" with the reason, and the suite goes on without it. The tiny server scripts live in
``bench/apps/`` and are copied next to the installed packages at run time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.servers import Role, ServerSpec

APPS = Path(__file__).with_name("apps")
NODE_PACKAGES = {"@tus/server": "2.4.5", "@tus/file-store": "2.1.1"}
NODE_MINIMUM = (20, 19)  # what @tus/server 2.x declares in "engines"
TUSPYSERVER = "4.4.3"
SAME_AS_OURS = ("uvicorn", "uvloop", "httptools")
INSTALL_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Peer:
    key: str
    label: str
    spec: ServerSpec | None  # None: unavailable
    reason: str = ""  # why unavailable


def _run(argv: list[str], cwd: Path | None = None) -> str:
    """Run an installer; raise ``RuntimeError`` with the end of its output when it fails."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()]
        tail = " | ".join(errors[-2:] or lines[-3:])
        raise RuntimeError(f"{' '.join(argv[:3])} exited {done.returncode}: {tail}")
    return done.stdout


def _stamp_matches(stamp: Path, wanted: str) -> bool:
    return stamp.exists() and stamp.read_text() == wanted


def node_peer(cache: Path, log: list[str]) -> Peer:
    key, label = "tus-node", "@tus/server"
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        return Peer(key, label, None, "node and npm are needed (not found on PATH)")
    try:
        version_text = _run([node, "--version"]).strip().lstrip("v")
        major, minor = (int(part) for part in version_text.split(".")[:2])
        if (major, minor) < NODE_MINIMUM:
            wanted = ".".join(map(str, NODE_MINIMUM))
            return Peer(key, label, None, f"node {version_text} is older than {wanted}")
        home = cache / "node"
        home.mkdir(parents=True, exist_ok=True)
        wanted = json.dumps(NODE_PACKAGES, sort_keys=True)
        stamp = home / ".installed"
        if not _stamp_matches(stamp, wanted):
            log.append(f"installing {', '.join(NODE_PACKAGES)} from npm into {home}")
            (home / "package.json").write_text(
                '{"name": "upload-service-bench-peers", "private": true}\n'
            )
            specs = [f"{name}@{version}" for name, version in NODE_PACKAGES.items()]
            _run([npm, "install", "--no-audit", "--no-fund", "--save-exact", *specs], cwd=home)
            stamp.write_text(wanted)
        script = home / "tus_node_server.mjs"
        shutil.copyfile(APPS / "tus_node_server.mjs", script)
        installed = json.loads((home / "node_modules/@tus/server/package.json").read_text())
    except (RuntimeError, OSError, ValueError) as exc:
        return Peer(key, label, None, str(exc))
    spec = ServerSpec(
        key=key,
        label=label,
        role=Role.PEER,
        argv=(node, str(script), "{port}", "{data}"),
        version=f"@tus/server {installed['version']} on node {version_text}",
        files_path="/files",
    )
    return Peer(key, label, spec)


def tuspyserver_peer(cache: Path, log: list[str]) -> Peer:
    key, label = "tuspyserver", "tuspyserver"
    home = cache / "tuspyserver-venv"
    python = home / "bin" / "python"
    pins = [f"tuspyserver=={TUSPYSERVER}"]
    try:
        pins += [f"{name}=={metadata.version(name)}" for name in SAME_AS_OURS]
    except metadata.PackageNotFoundError as exc:
        return Peer(key, label, None, f"our venv lacks {exc}")
    wanted = " ".join(pins)
    stamp = home / ".installed"
    try:
        if not _stamp_matches(stamp, wanted):
            log.append(f"installing {wanted} from PyPI into {home}")
            if not python.exists():
                _run([sys.executable, "-m", "venv", "--clear", str(home)])
            _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins])
            stamp.write_text(wanted)
        script = cache / "tuspyserver_app.py"
        shutil.copyfile(APPS / "tuspyserver_app.py", script)
    except (RuntimeError, OSError) as exc:
        return Peer(key, label, None, str(exc))
    spec = ServerSpec(
        key=key,
        label=label,
        role=Role.PEER,
        argv=(str(python), str(script), "{port}", "{data}"),
        version=wanted,
    )
    return Peer(key, label, spec)
