"""Logs: JSON and text lines, request ids, the access line, the upload id in context, no secrets,
the level; and the real ``upload-service`` process logging in the configured format."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from tests.conftest import TUS, make_settings
from tests.test_deploy import compose, dockerfile, replica_services
from tests.tus_http_helpers import BASE_URL as TEST_BASE_URL
from tests.tus_http_helpers import OFFSET_CT, create, patch, serve, set_expires_at
from upload_service.ops.logcontext import ContextFilter, request_context
from upload_service.ops.logs import JsonFormatter, TextFormatter, log_config, redact_query
from upload_service.ops.requestlog import RequestLogMiddleware, incoming_request_id
from upload_service.settings import ConfigError, Settings, load_settings

SUBPROCESS_GUARD = 120


class Captured:
    """What our handler (formatter + context filter) wrote for the ``upload_service`` loggers."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]

    def access(self, method: str, path: str) -> dict[str, object]:
        found = [
            record
            for record in self.records()
            if record["logger"] == "upload_service.access"
            and record["method"] == method
            and record["path"] == path
        ]
        assert len(found) == 1, self.text()
        return found[0]


def _capture(formatter: logging.Formatter, level: int) -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("upload_service")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield Captured(stream)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
def json_logs() -> Iterator[Captured]:
    yield from _capture(JsonFormatter(), logging.DEBUG)


@pytest.fixture
def text_logs() -> Iterator[Captured]:
    yield from _capture(TextFormatter(), logging.INFO)


def _utc(value: object) -> datetime:
    assert isinstance(value, str), value
    assert value.endswith("Z"), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timedelta(0)
    return moment


# -- settings -------------------------------------------------------------------------------------


def test_log_settings_default_to_text_info_and_an_access_log(clean_env: Path) -> None:
    settings = load_settings()
    assert (
        settings.observability.log_format,
        settings.observability.log_level,
        settings.observability.access_log,
    ) == ("text", "info", True)


def test_log_settings_are_read_without_case_and_validated(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_LOG_FORMAT", "JSON")
    monkeypatch.setenv("UPLOAD_LOG_LEVEL", "Warning")
    monkeypatch.setenv("UPLOAD_ACCESS_LOG", "false")
    settings = load_settings()
    assert (
        settings.observability.log_format,
        settings.observability.log_level,
        settings.observability.access_log,
    ) == (
        "json",
        "warning",
        False,
    )
    monkeypatch.setenv("UPLOAD_LOG_FORMAT", "xml")
    monkeypatch.setenv("UPLOAD_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "UPLOAD_LOG_FORMAT" in str(raised.value)
    assert "UPLOAD_LOG_LEVEL" in str(raised.value)


def test_the_configuration_names_the_format_and_level_for_every_logger(tmp_path: Path) -> None:
    config = log_config(make_settings(tmp_path, log_format="json", log_level="warning"))
    handler = config["handlers"]["stderr"]
    assert config["formatters"][handler["formatter"]]["()"] is JsonFormatter
    assert config["root"] == {"handlers": ["stderr"], "level": "WARNING"}
    assert config["loggers"]["uvicorn.error"]["level"] == "WARNING"
    assert config["loggers"]["uvicorn.access"]["propagate"] is False  # ours replaces it
    assert config["disable_existing_loggers"] is False
    text = log_config(make_settings(tmp_path))
    assert text["formatters"][text["handlers"]["stderr"]["formatter"]]["()"] is TextFormatter


# -- formatters -----------------------------------------------------------------------------------


def _record(message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("upload_service.x", level, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_time_level_logger_message_and_known_fields_only() -> None:
    record = _record("hello", upload_id="u1", request_id=None, color_message="\x1b[1mhello")
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {"time", "level", "logger", "message", "upload_id"}
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "upload_service.x", "hello")
    assert _utc(line["time"]).timestamp() == pytest.approx(record.created, abs=0.001)


def test_a_json_line_carries_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "upload_service.x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in str(line["exc_info"])


def test_a_text_line_has_utc_time_level_logger_message_and_context() -> None:
    line = TextFormatter().format(_record("hello", upload_id="u1"))
    match = re.fullmatch(r"(\S+) INFO upload_service\.x: hello \[upload_id=u1\]", line)
    assert match is not None, line
    _utc(match[1])
    assert TextFormatter().format(_record("plain")).endswith("upload_service.x: plain")


def test_the_context_filter_adds_the_request_and_keeps_a_records_own_upload_id() -> None:
    with request_context("req-1") as context:
        context.upload_id = "from-request"
        own = _record("x", upload_id="own")
        plain = _record("y")
        ContextFilter().filter(own)
        ContextFilter().filter(plain)
    assert (own.request_id, own.upload_id) == ("req-1", "own")  # type: ignore[attr-defined]
    assert (plain.request_id, plain.upload_id) == ("req-1", "from-request")  # type: ignore[attr-defined]
    outside = _record("z")
    ContextFilter().filter(outside)
    assert not hasattr(outside, "request_id")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        ("a=1&b=two", "a=1&b=two"),
        ("signature=abc&expires=9", "signature=REDACTED&expires=9"),
        ("Signature=abc", "Signature=REDACTED"),
        ("token=t&X-Amz-Signature=s", "token=REDACTED&X-Amz-Signature=REDACTED"),
        ("a=%2Ffiles%2Fx&signature=abc%3D", "a=/files/x&signature=REDACTED"),
        ("signature", "REDACTED"),  # a name without = does not parse either
        ("&&signature=abc", "REDACTED"),  # does not parse: replaced whole
    ],
)
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([b"abc-123"], "abc-123"),
        ([b"0123456789abcdef0123456789abcdef"], "0123456789abcdef0123456789abcdef"),
        ([b"trace:1.2_3"], "trace:1.2_3"),
        ([b"same", b"same"], "same"),
        ([b"one", b"two"], None),
        ([b"with space"], None),
        ([b'quote"d'], None),
        ([b"a" * 129], None),
        ([b"a" * 128], "a" * 128),
        ([b""], None),
        (["caf\u00e9".encode()], None),
    ],
)
def test_incoming_request_id(values: list[bytes], expected: str | None) -> None:
    headers = [(b"x-request-id", value) for value in values] + [(b"host", b"x")]
    assert incoming_request_id(headers) == expected


# -- over HTTP ------------------------------------------------------------------------------------


async def test_every_request_gets_an_access_line_and_an_id(
    client: httpx.AsyncClient, json_logs: Captured
) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    request_id = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    line = json_logs.access("GET", "/healthz")
    assert line["request_id"] == request_id
    assert (line["level"], line["status"], line["client"]) == ("INFO", 200, "127.0.0.1")
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0
    _utc(line["time"])
    assert line["message"] == (
        f'127.0.0.1 - "GET /healthz HTTP/1.1" 200 {line["duration_ms"]:.1f} ms'
    )
    assert not {"bytes_received", "upload_id", "query"} & set(line)
    second = await client.get("/healthz")
    assert second.headers["X-Request-Id"] != request_id


async def test_a_sane_request_id_is_echoed_and_a_bad_one_replaced(
    client: httpx.AsyncClient, json_logs: Captured
) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-Id": "edge-4711:a.b_c"})
    assert echoed.headers["X-Request-Id"] == "edge-4711:a.b_c"
    for bad in ("has space", "x" * 129, "semi;colon"):
        replaced = await client.get("/healthz", headers={"X-Request-Id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-Id"])
        assert bad not in json_logs.text()
    ids = [record.get("request_id") for record in json_logs.records()]
    assert ids[0] == "edge-4711:a.b_c"
    assert len(set(ids)) == 4


async def test_errors_405s_404s_and_preflights_carry_the_request_id(
    client: httpx.AsyncClient,
) -> None:
    headers = {"X-Request-Id": "rid-1"}
    answers = [
        await client.put("/files/", headers=headers),  # 405
        await client.get("/nowhere", headers=headers),  # 404
        await client.head("/files/" + "0" * 32, headers={**TUS, **headers}),  # tus 404
        await client.post("/files/", headers={"Tus-Resumable": "0.2.2", **headers}),  # 412
        await client.options(
            "/files/",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "x-request-id,upload-offset",
                **headers,
            },
        ),
    ]
    assert [answer.status_code for answer in answers] == [405, 404, 404, 412, 200]
    assert all(answer.headers.get_list("X-Request-Id") == ["rid-1"] for answer in answers)
    preflight = answers[-1]
    assert "x-request-id" in preflight.headers["Access-Control-Allow-Headers"].lower()
    simple = await client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "x-request-id" in simple.headers["Access-Control-Expose-Headers"].lower()


async def test_an_unhandled_error_is_a_500_with_the_request_id_and_an_access_line(
    app: FastAPI, json_logs: Captured
) -> None:
    async def boom() -> None:
        raise RuntimeError("unexpected")

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=TEST_BASE_URL) as http:
        response = await http.get("/boom", headers={"X-Request-Id": "rid-500"})
    assert response.status_code == 500
    assert response.headers["X-Request-Id"] == "rid-500"
    line = json_logs.access("GET", "/boom")
    assert (line["status"], line["request_id"]) == (500, "rid-500")


async def test_the_upload_id_is_in_the_lines_of_its_requests(
    client: httpx.AsyncClient, json_logs: Captured
) -> None:
    upload_id = await create(client, 10)
    created = json_logs.access("POST", "/files/")
    assert created["upload_id"] == upload_id
    assert created["bytes_received"] == 0
    response = await patch(client, upload_id, 0, b"0123456789")
    assert response.status_code == 204
    patched = json_logs.access("PATCH", f"/files/{upload_id}")
    assert patched["upload_id"] == upload_id
    assert (patched["status"], patched["bytes_received"]) == (204, 10)
    assert patched["request_id"] == response.headers["X-Request-Id"]
    assert '"PATCH /files/' + upload_id + ' HTTP/1.1" 204 10 bytes in' in str(patched["message"])
    # the handler's own lines during the PATCH carry both ids too
    received = [
        record
        for record in json_logs.records()
        if str(record["message"]).startswith("received 10 bytes, offset 0 -> 10")
    ]
    assert len(received) == 1
    assert received[0]["upload_id"] == upload_id
    assert received[0]["request_id"] == patched["request_id"]
    lifecycle = {record["message"]: record for record in json_logs.records()}
    assert lifecycle["upload created (length 10)"]["upload_id"] == upload_id
    status = await client.get(f"/api/uploads/{upload_id}")
    assert json_logs.access("GET", f"/api/uploads/{upload_id}")["upload_id"] == upload_id
    assert status.status_code == 200


async def test_background_clean_up_lines_name_the_upload(
    settings: Settings, json_logs: Captured
) -> None:
    async with serve(settings) as served:
        upload_id = await create(served.client, 10)
        await set_expires_at(served.services, upload_id, datetime(2000, 1, 1))
        assert await served.services.handler.lifecycle.expire() == 1
    expired = [
        r for r in json_logs.records() if r["message"] == "upload expired, its bytes deleted"
    ]
    assert len(expired) == 1
    assert expired[0]["upload_id"] == upload_id
    assert "request_id" not in expired[0]  # not part of any request


async def test_no_secrets_are_logged(client: httpx.AsyncClient, json_logs: Captured) -> None:
    secret_name = "confidential-file-name.mp4"
    metadata = "filename " + base64.b64encode(secret_name.encode()).decode()
    secret_headers = {
        "Authorization": "Bearer the-bearer-token",
        "Cookie": "session=the-cookie",
    }
    upload_id = await create(client, 4, metadata=metadata)
    response = await client.patch(
        f"/files/{upload_id}",
        params={"signature": "the-signature", "expires": "123"},
        headers={
            **TUS,
            **secret_headers,
            "Upload-Offset": "0",
            "Content-Type": OFFSET_CT,
        },
        content=b"abcd",
    )
    assert response.status_code == 204
    output = json_logs.text()
    for secret in (
        "the-bearer-token",
        "the-cookie",
        "the-signature",
        secret_name,
        metadata.split()[1],
    ):
        assert secret not in output
    line = json_logs.access("PATCH", f"/files/{upload_id}")
    assert line["query"] == "signature=REDACTED&expires=123"
    assert "signature=REDACTED" in str(line["message"])


async def test_the_text_format_keeps_uvicorns_request_line(
    client: httpx.AsyncClient, text_logs: Captured
) -> None:
    upload_id = await create(client, 3)
    await patch(client, upload_id, 0, b"abc")
    lines = [line for line in text_logs.lines() if "upload_service.access" in line]
    assert len(lines) == 2, text_logs.text()
    # the request line e2e tests (and operators' greps) look for, as uvicorn's access log wrote it
    assert re.search(rf'"PATCH /files/{upload_id} HTTP/1.1" 204', lines[1])
    pattern = (
        r"\S+Z INFO upload_service\.access: 127\.0\.0\.1 - \"PATCH /files/\w+ HTTP/1\.1\" 204 "
        r"3 bytes in \d+\.\d ms \[request_id=[0-9a-f]{32} upload_id=\w+\]"
    )
    assert re.fullmatch(pattern, lines[1]), lines[1]


async def test_the_level_is_respected(client: httpx.AsyncClient) -> None:
    for captured in _capture(JsonFormatter(), logging.WARNING):
        upload_id = await create(client, 3)
        await patch(client, upload_id, 0, b"abc")
        await client.get("/files/" + "f" * 32, headers=TUS)
        assert captured.text() == ""


async def test_the_access_log_can_be_turned_off(settings: Settings, json_logs: Captured) -> None:
    async with serve(settings.replace(access_log=False)) as served:
        upload_id = await create(served.client, 3)
        response = await patch(served.client, upload_id, 0, b"abc")
    assert response.headers["X-Request-Id"]
    loggers = {record["logger"] for record in json_logs.records()}
    assert "upload_service.access" not in loggers
    assert "upload_service.tus" in loggers  # the other lines stay


# -- the real process -----------------------------------------------------------------------------


def _command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("upload-service")
    return [str(script), *args]


def _child_env(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPLOAD_")}
    env.update(values)
    return env


@pytest.mark.parametrize(
    ("fmt", "level", "logged"), [("json", "info", True), ("text", "warning", False)]
)
def test_a_command_logs_in_the_configured_format_and_level(
    clean_env: Path, fmt: str, level: str, logged: bool
) -> None:
    result = subprocess.run(
        _command("migrate"),
        cwd=clean_env,
        env=_child_env(
            UPLOAD_LOG_FORMAT=fmt,
            UPLOAD_LOG_LEVEL=level,
            UPLOAD_DATABASE_URL=f"sqlite+aiosqlite:///{clean_env / 'u.db'}",
        ),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    if not logged:
        assert lines == []
        return
    records = [json.loads(line) for line in lines]
    assert records[-1]["message"].startswith("database at head: sqlite+aiosqlite:///")
    assert records[-1]["logger"] == "upload_service.migrate"


def test_the_image_and_compose_log_json() -> None:
    assert "UPLOAD_LOG_FORMAT=json" in dict(dockerfile())["ENV"]
    for service in replica_services(compose()).values():
        assert service["environment"]["UPLOAD_LOG_FORMAT"] == "json"


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("PATCH", 204, []),
        ("GET", 304, []),
        ("HEAD", 200, [(b"content-length", b"12")]),
        ("POST", 201, [(b"content-length", b"0")]),
    ],
)
async def test_an_answer_that_ends_with_its_head_is_logged_before_the_head_goes_out(
    caplog: pytest.LogCaptureFixture, method: str, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    """The server writes a head as soon as it is sent; with no body to follow, the client has
    the whole answer then, so the access line must already be there (not after the empty body)."""
    logged_before_head: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def server_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            logged_before_head.append(
                any(record.name == "upload_service.access" for record in caplog.records)
            )

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: Scope = {
        "type": "http",
        "method": method,
        "path": "/files/x",
        "raw_path": b"/files/x",
        "query_string": b"",
        "headers": [],
        "http_version": "1.1",
        "client": ("127.0.0.1", 5000),
    }
    with caplog.at_level(logging.INFO, logger="upload_service.access"):
        await RequestLogMiddleware(app)(scope, receive, server_send)
    assert logged_before_head == [True]
    assert sum(record.name == "upload_service.access" for record in caplog.records) == 1
