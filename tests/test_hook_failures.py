"""What a failed delivery shows the upload's owner (``GET /api/uploads/{id}/deliveries``): a
status class or a fixed reason, never what the receiver or the hook said. A receiver is the
operator's infrastructure: its body, its redirect targets and its stack traces go to the log,
with the event and upload ids, and the reason to the metrics."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.hook_receiver import Answer, Receiver, receiver
from tests.test_hooks import create, hook_settings, running
from upload_service.settings import Settings

INTERNAL = "http://10.20.30.40:9000/internal/admin?token=abc123"
SECRET = "the db password is hunter2"
TRACEBACK = (
    b"Traceback (most recent call last):\n"
    b'  File "/srv/receiver/app.py", line 12, in hook\n'
    b"    raise KeyError(secret)\n"
    b"KeyError: 'hunter2'\n"
)


@pytest.fixture
def hook_receiver() -> Iterator[Receiver]:
    with receiver() as state:
        yield state


async def fail_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> tuple[str, httpx.Response, str]:
    """Create an upload whose post-create fails its one attempt: the upload id, the deliveries
    answer and the metrics (the log lines are in ``caplog``)."""
    settings = settings.replace(hook_max_attempts=1)
    with caplog.at_level(logging.WARNING, logger="upload_service.hooks"):
        async with running(settings) as (_, client):
            upload_id = await create(client)
            url = f"/api/uploads/{upload_id}/deliveries"
            with anyio.fail_after(10):
                while (await client.get(url)).json()[0]["status"] != "failed":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            deliveries = await client.get(url)
            metrics = (await client.get("/metrics")).text
    return upload_id, deliveries, metrics


def attempt_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The log line of the failed attempt."""
    [line] = [record for record in caplog.records if ", attempt 1: " in record.getMessage()]
    return line


_RANDOM_OR_TIME = re.compile(
    r"[0-9a-f]{32}|[0-9a-f-]{36}|\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)?"
)


def shown(deliveries: httpx.Response) -> str:
    """Everything the API shows of the deliveries, except the values that are random or times
    (ids, timestamps) and numbers, in which a status code's digits turn up by chance ("500" in a
    hex id one time in a few hundred)."""
    texts: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                texts.append(str(key))
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and not _RANDOM_OR_TIME.fullmatch(value):
            texts.append(value)

    walk(deliveries.json())
    return "\n".join(texts)


def check_operator_side(
    upload_id: str, deliveries: httpx.Response, metrics: str, line: logging.LogRecord, label: str
) -> None:
    """The attempt's log line names the event and the upload; the metrics count the reason."""
    [delivery] = deliveries.json()
    assert getattr(line, "upload_id", None) == upload_id
    assert getattr(line, "event_id", None) == delivery["id"]
    assert delivery["id"] in line.getMessage()
    failures = f'upload_hook_delivery_failures_total{{reason="{label}",type="post-create"}} 1.0'
    assert failures in metrics


@pytest.mark.parametrize(
    ("answer", "reason", "label", "hidden", "logged"),
    [
        (
            Answer(307, SECRET.encode(), headers=(("Location", INTERNAL),)),
            "receiver answered a redirect (3xx)",
            "redirect",
            (INTERNAL, "10.20.30.40", "hunter2", "307"),
            ("HTTP 307", INTERNAL, SECRET),
        ),
        (
            Answer(500, TRACEBACK),
            "receiver answered 5xx",
            "server_error",
            ("Traceback", "/srv/receiver", "hunter2", "500"),
            ("HTTP 500", "Traceback (most recent call last):"),
        ),
        (
            Answer(403, b"tenant 42 refused by rule admin-only (hunter2)"),
            "receiver answered 4xx",
            "client_error",
            ("tenant 42", "admin-only", "hunter2", "403"),
            ("HTTP 403", "tenant 42 refused by rule admin-only"),
        ),
    ],
    ids=["redirect", "stack-trace", "refusal"],
)
async def test_a_receivers_answer_is_shown_as_its_status_class_and_logged_in_full(
    sqlite_dir: Path,
    hook_receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    answer: Answer,
    reason: str,
    label: str,
    hidden: tuple[str, ...],
    logged: tuple[str, ...],
) -> None:
    hook_receiver.default = answer
    settings = hook_settings(sqlite_dir, hook_url=hook_receiver.url)
    upload_id, deliveries, metrics = await fail_once(settings, caplog)
    [delivery] = deliveries.json()
    assert (delivery["status"], delivery["attempts"], delivery["last_error"]) == (
        "failed",
        1,
        reason,
    )
    for text in hidden:
        assert text not in shown(deliveries)
    line = attempt_line(caplog)
    for text in logged:
        assert text in line.getMessage()
    check_operator_side(upload_id, deliveries, metrics, line, label)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_receiver_that_does_not_answer_in_time_timed_out(
    sqlite_dir: Path, hook_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    hook_receiver.default = Answer(delay=1.0)
    settings = hook_settings(sqlite_dir, hook_url=hook_receiver.url, hook_timeout=0.2)
    upload_id, deliveries, metrics = await fail_once(settings, caplog)
    assert deliveries.json()[0]["last_error"] == "receiver timed out"
    line = attempt_line(caplog)
    assert "ReadTimeout" in line.getMessage()
    check_operator_side(upload_id, deliveries, metrics, line, "timeout")


async def test_a_receiver_nobody_listens_for_could_not_be_connected_to(
    sqlite_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/internal-hook"
    upload_id, deliveries, metrics = await fail_once(
        hook_settings(sqlite_dir, hook_url=url), caplog
    )
    assert deliveries.json()[0]["last_error"] == "could not connect to the receiver"
    assert "internal-hook" not in deliveries.text
    line = attempt_line(caplog)
    assert "ConnectError" in line.getMessage()
    check_operator_side(upload_id, deliveries, metrics, line, "connect")


async def test_a_python_hook_that_raises_is_shown_as_a_hook_error(
    sqlite_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = hook_settings(sqlite_dir, hook_post="python:tests.hook_functions:explode")
    upload_id, deliveries, metrics = await fail_once(settings, caplog)
    assert deliveries.json()[0]["last_error"] == "the hook raised an error"
    for text in ("RuntimeError", "postgres://", "hunter2", "10.9.8.7"):
        assert text not in deliveries.text
    line = attempt_line(caplog)
    assert "RuntimeError: cannot reach postgres://archive:hunter2@10.9.8.7/archive" in (
        line.getMessage()
    )
    check_operator_side(upload_id, deliveries, metrics, line, "hook_error")
    tracebacks = [record for record in caplog.records if record.exc_info is not None]
    assert tracebacks, "the hook's traceback is logged"
