"""``upload-service healthcheck``: the image's HEALTHCHECK. It asks this host's service, at the
address and port the settings give, for ``/readyz``: 0 on 200, 1 (with the reason on stderr) on
anything else or no answer; bad arguments exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.support import free_port, http_server
from upload_service.cli import healthcheck_url, main


@dataclass
class Stub:
    """An HTTP server on 127.0.0.1 answering every GET with ``status``; records the paths."""

    port: int
    status: int = 200
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def stub() -> Iterator[Stub]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer.paths.append(self.path)
            self.send_response(answer.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    with http_server(Handler, "readyz-stub") as port:
        answer = Stub(port=port)
        yield answer


def test_ready_is_0_and_the_port_comes_from_the_settings(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, stub: Stub
) -> None:
    monkeypatch.setenv("UPLOAD_PORT", str(stub.port))
    monkeypatch.setenv("UPLOAD_HOST", "0.0.0.0")  # every address: asked on loopback
    assert main(["healthcheck"]) == 0
    assert main(["healthcheck", "--path", "/healthz"]) == 0
    assert stub.paths == ["/readyz", "/healthz"]


@pytest.mark.parametrize("status", [503, 404, 500])
def test_not_ready_is_1_with_the_status(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stub: Stub,
    status: int,
) -> None:
    stub.status = status
    monkeypatch.setenv("UPLOAD_PORT", str(stub.port))
    assert main(["healthcheck"]) == 1
    assert f"answered {status}" in capsys.readouterr().err


def test_no_service_is_1_with_the_reason(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPLOAD_PORT", str(free_port()))  # nothing listens there
    assert main(["healthcheck", "--timeout", "2"]) == 1
    assert "refused" in capsys.readouterr().err.lower()


@pytest.mark.parametrize(
    "args", [["--path", "readyz"], ["--timeout", "0"], ["--timeout", "soon"], ["--timeout", "301"]]
)
def test_bad_arguments_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["healthcheck", *args])
    assert caught.value.code == 2
    assert "healthcheck" in capsys.readouterr().err


def test_a_bad_setting_exits_2_naming_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPLOAD_PORT", "eighty")
    with pytest.raises(SystemExit) as caught:
        main(["healthcheck"])
    assert caught.value.code == 2
    assert "UPLOAD_PORT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8123/readyz"),
        ("", "http://127.0.0.1:8123/readyz"),
        ("::", "http://[::1]:8123/readyz"),
        ("127.0.0.2", "http://127.0.0.2:8123/readyz"),
        ("::1", "http://[::1]:8123/readyz"),
    ],
)
def test_the_address_asked_is_where_the_service_listens(
    tmp_path: Path, host: str, url: str
) -> None:
    settings = make_settings(tmp_path, host=host, port=8123)
    assert healthcheck_url(settings, "/readyz") == url
