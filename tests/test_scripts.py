"""``scripts/serve`` says where the ``upload-service`` command is before it starts the service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def test_serve_names_the_command_then_serves(tmp_path: Path) -> None:
    # the real script in a copy of the layout, with setup and the command stubbed
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "serve", tmp_path / "scripts" / "serve")
    _executable(tmp_path / "scripts" / "setup", "#!/bin/sh\nexit 0\n")
    _executable(tmp_path / ".venv" / "bin" / "upload-service", '#!/bin/sh\necho "ran: $*"\n')
    done = subprocess.run(
        [str(tmp_path / "scripts" / "serve"), "--port", "9000"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran: serve --port 9000\n"
    command = tmp_path.resolve() / ".venv" / "bin" / "upload-service"
    assert done.stderr.splitlines() == [
        f"serve: the upload-service command (upload, status, download, token, ...) is {command}"
    ]


def test_reliability_refuses_an_unknown_configuration() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "reliability"), "--configs", "sqlite,mongodb", "--kills", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown configuration(s) mongodb" in done.stderr
