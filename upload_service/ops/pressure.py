"""Shedding load past capacity: ``LoadShedding`` answers new requests 503 with ``Retry-After``
while the service is overloaded, so that a client past capacity learns it at once and cheaply,
instead of waiting in line until it gives up.

Overload is read off the answers themselves (CoDel's signal): the requests without a body (HEAD,
a POST that creates, DELETE, OPTIONS, GET; their time to answer is the service's own, not the
client's upload speed) are timed from their arrival to the start of their answer. When a window
of ``WINDOW`` seconds saw at least ``MIN_ANSWERS`` of them and even the quickest took longer
than ``target``, a queue stands inside the service (requests wait for the loop, a worker thread
or the database), and the next window sheds:

- new uploads first: every POST (a tus creation, a form upload) is refused, while the uploads
  already running go on (their HEADs, PATCHes, DELETEs and downloads): the work a client has
  already put in is finished rather than wasted, and the load falls as they end;
- everything (except the health checks and the metrics) once even the quickest answer took
  ``ALL_AFTER`` times the target: the running uploads alone are too many. A tus client retries a
  503, PATCH included.

A window with no timed answer (all shed, or none asked) admits again, so the service probes its
own load each window and recovers on its own.

Crash story: none; it keeps nothing but two numbers, and refuses requests before they start.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upload_service.errors import ServiceError, Unavailable
from upload_service.ops.middleware import route_path

WINDOW = 1.0  # seconds over which the quickest answer is taken
# answers a window needs to shed the next: a few requests slow on purpose (a HEAD waiting for a
# PATCH to commit, a download waiting for verification) are no queue
MIN_ANSWERS = 10
ALL_AFTER = 4  # times the target: beyond it, the requests of running uploads are shed too
RETRY_AFTER = "1"
_BODYLESS = frozenset({"HEAD", "GET", "DELETE", "OPTIONS", "POST"})
NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})


class Shed(enum.IntEnum):
    NOTHING = 0
    NEW_UPLOADS = 1
    EVERYTHING = 2


class Pressure:
    """The quickest timed answer of the current window, and what the window sheds."""

    def __init__(
        self,
        target: float,
        *,
        window: float = WINDOW,
        min_answers: int = MIN_ANSWERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.window = window
        self.min_answers = min_answers
        self._clock = clock
        self._answers = 0
        self._window_end = clock() + window
        self._quickest = math.inf
        self._shedding = Shed.NOTHING

    @property
    def shedding(self) -> Shed:
        self._roll(self._clock())
        return self._shedding

    def answered(self, seconds: float) -> None:
        self._roll(self._clock())
        self._quickest = min(self._quickest, seconds)
        self._answers += 1

    def _roll(self, now: float) -> None:
        if now < self._window_end:
            return
        # a window that ended more than one window ago saw nothing since: it admits
        recent = now < self._window_end + self.window
        many = self._answers >= self.min_answers
        if not (recent and many) or self._quickest <= self.target:
            self._shedding = Shed.NOTHING
        elif self._quickest <= self.target * ALL_AFTER:
            self._shedding = Shed.NEW_UPLOADS
        else:
            self._shedding = Shed.EVERYTHING
        self._quickest = math.inf
        self._answers = 0
        self._window_end = now + self.window


ErrorRender = Callable[[Request, ServiceError], Awaitable[Response]]


class LoadShedding:
    """Pure ASGI: 503 with ``Retry-After`` while ``pressure`` sheds; times the answers to
    requests without a body. ``render`` makes the answer in the service's one error format."""

    def __init__(self, app: ASGIApp, pressure: Pressure, render: ErrorRender) -> None:
        self.app = app
        self.pressure = pressure
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in NEVER_SHED:
            await self.app(scope, receive, send)
            return
        pressure = self.pressure
        shedding = pressure.shedding
        if shedding is Shed.EVERYTHING or (shedding and scope["method"] == "POST"):
            refused = Unavailable(
                "the service is overloaded; retry shortly",
                headers={"Retry-After": RETRY_AFTER},
            )
            response = await self.render(Request(scope), refused)
            await response(scope, receive, send)
            return
        if scope["method"] not in _BODYLESS or _has_body(scope):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                pressure.answered(time.monotonic() - started)
            await send(message)

        await self.app(scope, receive, timed)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False
