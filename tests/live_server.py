"""A real HTTP server for client tests: the app under uvicorn on 127.0.0.1 in a thread, behind
an ASGI wrapper that records every request and can fail some (a 503 with ``Retry-After``, a 423,
a 409) or slow request bodies down, so a client's retries and resumption can be watched."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upload_service.app import create_app
from upload_service.settings import Settings


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class Fault:
    method: str
    status: int
    times: int  # how many matching requests get it
    headers: dict[str, str] = field(default_factory=dict)
    after: int = 0  # let this many matching requests through first


class Faults:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self.body_delay = 0.0  # seconds slept per body message of a PATCH (a slow network)
        self._lock = threading.Lock()

    def requests(self, method: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == method]

    def _fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.times > 0:
                    if fault.after > 0:
                        fault.after -= 1
                        return None
                    fault.times -= 1
                    return fault
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        seen = Seen(scope["method"], scope["path"], headers)
        self.seen.append(seen)
        fault = self._fault(scope["method"])
        if fault is not None:
            seen.status = fault.status
            await send(
                {
                    "type": "http.response.start",
                    "status": fault.status,
                    "headers": [
                        (b"tus-resumable", b"1.0.0"),
                        *((k.encode(), v.encode()) for k, v in fault.headers.items()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"injected fault\n"})
            return

        async def slow_receive() -> Message:
            message = await receive()
            if self.body_delay and scope["method"] == "PATCH":
                await asyncio.sleep(self.body_delay)
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
            await send(message)

        await self.app(scope, slow_receive, recording_send)


@dataclass
class Live:
    url: str  # http://127.0.0.1:<port>
    faults: Faults

    @property
    def endpoint(self) -> str:
        return f"{self.url}/files/"


@contextmanager
def live_server(settings: Settings) -> Iterator[Live]:
    faults = Faults(create_app(settings, settle_heap=False))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        faults, host="127.0.0.1", port=port, lifespan="on", log_level="warning", loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", faults)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
