"""Static checks of the Docker deployment (no Docker engine runs here) and of the packaging."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_dockerfile_copies_what_the_install_needs() -> None:
    instructions = dockerfile()
    assert instructions[0][0] == "FROM"
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*", instructions[0][1])
    copied = [rest.split()[:-1] for keyword, rest in instructions if keyword == "COPY"]
    sources = {source for group in copied for source in group}
    for needed in ("pyproject.toml", "README.md", "upload_service", "migrations"):
        assert needed in sources, f"Dockerfile does not copy {needed}"
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_dockerfile_runs_the_console_script_as_non_root_on_all_interfaces() -> None:
    instructions = dict(dockerfile())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert instructions["ENTRYPOINT"] == '["upload-service"]'
    assert "upload-service" in scripts
    assert instructions["CMD"] == '["serve"]'
    assert instructions["USER"] not in ("root", "0")
    env = instructions["ENV"]
    assert "UPLOAD_HOST=0.0.0.0" in env
    port = re.search(r"UPLOAD_PORT=(\d+)", env)
    assert port is not None
    assert instructions["EXPOSE"] == port.group(1)
    assert f":{port.group(1)}/healthz" in instructions["HEALTHCHECK"]
    data_dir = re.search(r"UPLOAD_DATA_DIR=(\S+)", env)
    assert data_dir is not None
    assert data_dir.group(1) in instructions["VOLUME"]


def test_compose_serves_the_image_with_a_persistent_volume() -> None:
    data = compose()
    service = data["services"]["upload"]
    assert service["build"] == "."
    assert (ROOT / service["build"] / "Dockerfile").is_file()
    env = service["environment"]
    assert any(port.endswith(f":{env['UPLOAD_PORT']}") for port in service["ports"])
    volume, _, mount = service["volumes"][0].partition(":")
    assert mount == env["UPLOAD_DATA_DIR"]
    assert volume in data["volumes"]
    # uvicorn's graceful shutdown (30 s) must fit in the stop grace period
    assert int(service["stop_grace_period"].rstrip("s")) > 30


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "data"):
        assert entry in ignored


def test_wheel_carries_the_migrations(tmp_path: Path) -> None:
    """The image installs a wheel, not the checkout: migrations must travel inside it."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed: {result.stderr[-2000:]}")
    wheel = next(tmp_path.glob("upload_service-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "upload_service/_migrations/env.py" in names
    assert any(name.startswith("upload_service/_migrations/versions/0001") for name in names)
