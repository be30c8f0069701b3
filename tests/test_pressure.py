"""Shedding load past capacity (``ops.pressure``): the quickest answer of a window decides
whether the next one sheds; shed requests get a one-line 503 with ``Retry-After`` in the
service's error format, the health checks and the metrics never do, and the service recovers on
its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from tests.conftest import TUS, make_settings
from upload_service.app import create_app
from upload_service.errors import ServiceError
from upload_service.ops.pressure import LoadShedding, Pressure, Shed

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pressure(min_answers: int = 1) -> tuple[Pressure, Clock]:
    """A target of 0.1 s, on a clock the test moves."""
    clock = Clock()
    return Pressure(0.1, min_answers=min_answers, clock=clock), clock


def test_no_answers_never_shed() -> None:
    pressure, clock = _pressure()
    for _ in range(5):
        clock.now += 1.0
        assert not pressure.shedding


def test_a_window_of_slow_answers_sheds_the_next_and_a_quick_answer_ends_it() -> None:
    pressure, clock = _pressure()
    pressure.answered(0.5)
    pressure.answered(0.2)
    assert not pressure.shedding  # the window has not ended
    clock.now += 1.0
    assert pressure.shedding  # even the quickest took longer than the target
    pressure.answered(0.3)  # requests admitted before, answered now
    pressure.answered(0.05)
    clock.now += 1.0
    assert not pressure.shedding  # one answer was quick: no queue stands


def test_a_few_slow_answers_are_no_queue() -> None:
    # a HEAD waiting for a PATCH to commit is slow on purpose: it alone sheds nothing
    pressure, clock = _pressure(min_answers=3)
    pressure.answered(1.5)
    pressure.answered(1.5)
    clock.now += 1.0
    assert not pressure.shedding
    for _ in range(3):
        pressure.answered(1.5)
    clock.now += 1.0
    assert pressure.shedding


def test_how_slow_the_quickest_answer_was_says_what_is_shed() -> None:
    pressure, clock = _pressure()
    pressure.answered(0.3)
    clock.now += 1.0
    first = pressure.shedding
    pressure.answered(0.5)
    clock.now += 1.0
    second = pressure.shedding
    assert (first, second) == (Shed.NEW_UPLOADS, Shed.EVERYTHING)


def test_one_quick_answer_in_a_window_keeps_it_admitting() -> None:
    pressure, clock = _pressure()
    pressure.answered(2.0)
    pressure.answered(0.01)
    clock.now += 1.0
    assert not pressure.shedding


def test_a_window_with_no_answers_admits_again() -> None:
    pressure, clock = _pressure()
    pressure.answered(0.5)
    clock.now += 1.0
    assert pressure.shedding
    clock.now += 1.0  # everything shed: nothing answered in that window
    assert not pressure.shedding
    pressure.answered(0.5)  # still slow: the next window sheds again
    clock.now += 1.0
    assert pressure.shedding
    clock.now += 5.0  # long idle
    assert not pressure.shedding


async def _render(request: Request, exc: ServiceError) -> Response:
    return PlainTextResponse(exc.message, exc.status, headers=exc.headers)


def _slow(delay: float) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An app that answers after ``delay`` seconds, reading any body first."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        more = scope["method"] in ("PATCH", "POST")
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await anyio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _client(pressure: Pressure, delay: float) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=LoadShedding(_slow(delay), pressure, _render))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_slow_answers_shed_new_uploads_first() -> None:
    # answers take 3 times the target: new uploads wait, running ones go on
    pressure = Pressure(0.01, window=0.1, min_answers=1)
    async with _client(pressure, 0.03) as client:
        assert (await client.head("/files/a")).status_code == 200
        await anyio.sleep(0.1)
        refused = await client.post("/files")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.text == "the service is overloaded; retry shortly"
        assert (await client.post("/api/uploads", content=b"x")).status_code == 503
        assert (await client.patch("/files/a", content=b"x" * 10)).status_code == 200
        assert (await client.delete("/files/a")).status_code == 200
        assert (await client.get("/files/b")).status_code == 200


async def test_very_slow_answers_shed_everything_but_health_and_metrics() -> None:
    pressure = Pressure(0.01, window=0.1, min_answers=1)
    async with _client(pressure, 0.05) as client:  # 5 times the target
        assert (await client.head("/files/a")).status_code == 200
        await anyio.sleep(0.1)
        assert (await client.head("/files/a")).status_code == 503
        refused = await client.get("/files/a")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        patch = await client.patch("/files/a", content=b"x" * 10)
        assert patch.status_code == 503  # PATCH is shed too: a tus client retries
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200
        await anyio.sleep(0.25)  # nothing answered for a window: it admits again
        assert (await client.get("/api/uploads")).status_code == 200


async def test_slow_requests_with_a_body_are_not_timed() -> None:
    # a PATCH's time to answer is its client's upload speed, not the service's queue
    pressure = Pressure(0.01, window=0.1, min_answers=1)
    async with _client(pressure, 0.05) as client:
        for _ in range(3):
            assert (await client.patch("/files/a", content=b"x" * 10)).status_code == 200
            assert (await client.post("/files", content=b"x" * 10)).status_code == 200
        await anyio.sleep(0.1)
        assert (await client.post("/files")).status_code == 200


@pytest.fixture
async def overloaded(sqlite_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The service itself, with a target no answer can meet: shedding starts one window after
    the first answer."""
    app = create_app(make_settings(sqlite_dir, shed_latency=1e-9), settle_heap=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_the_service_sheds_in_its_own_error_format(overloaded: httpx.AsyncClient) -> None:
    for _ in range(10):  # enough answers to tell a queue
        assert (await overloaded.head("/files/" + "f" * 32, headers=TUS)).status_code == 404
    await anyio.sleep(1.05)
    tus = await overloaded.post("/files", headers={**TUS, "Upload-Length": "10"})
    assert tus.status_code == 503
    assert tus.headers["retry-after"] == "1"
    assert tus.headers["tus-resumable"] == "1.0.0"
    api = await overloaded.get("/api/uploads")
    assert api.status_code == 503
    assert api.json()["error"]["message"] == "the service is overloaded; retry shortly"
    assert (await overloaded.get("/healthz")).status_code == 200
