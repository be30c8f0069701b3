"""The README's shell recipes work as typed on a fresh machine."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _curl_lines() -> list[str]:
    return [line for line in README.read_text().splitlines() if re.match(r"\s*curl\s", line)]


def test_downloads_write_to_a_named_file() -> None:
    # -O/-J take the name from the URL or Content-Disposition: in the folder of the uploaded
    # file that is the file itself (-J refuses to overwrite it and fails; -O alone names the
    # file after the upload id)
    remote_named = [line for line in _curl_lines() if re.search(r"\s-(O|J|OJ|JO)\b", line)]
    assert remote_named == []


def test_the_test_token_comes_from_the_token_command() -> None:
    text = README.read_text()
    assert "import jwt" not in text  # a system Python has no PyJWT
    assert "TOKEN=$(.venv/bin/upload-service token --sub alice)" in text
    assert 'export UPLOAD_AUTH_JWT_SECRET="$(openssl rand -base64 48)"' in text
