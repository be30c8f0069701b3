"""A real HTTP receiver for hook tests: ``http.server`` in a thread on 127.0.0.1, recording every
request (headers, body, when it started and ended) and answering as it is told to."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()  # sent besides Content-Length and -Type

    @classmethod
    def json(cls, value: object, status: int = 200) -> Answer:
        return cls(status, json.dumps(value).encode())


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    started: float
    ended: float = 0.0

    def json(self) -> dict[str, object]:
        value: dict[str, object] = json.loads(self.body)
        return value


@dataclass
class Receiver:
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)  # next answers, in order
    default: Answer = field(default_factory=Answer)  # once those are used up
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> Answer:
        with self.lock:
            return self.answers.pop(0) if self.answers else self.default

    def record(self, request: Received) -> None:
        with self.lock:
            self.requests.append(request)

    def received(self) -> list[Received]:
        with self.lock:
            return [request for request in self.requests if request.ended]

    def events(self) -> list[dict[str, object]]:
        return [request.json() for request in self.received()]


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            started = time.monotonic()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Received(self.path, dict(self.headers.items()), body, started)
            answer = state.answer()
            if answer.delay:
                time.sleep(answer.delay)
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("Content-Type", "application/json")
            for name, value in answer.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)
            request.ended = time.monotonic()
            state.record(request)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            # a client that gave up waiting (a hook timeout under test) is no receiver's error
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)  # type: ignore[arg-type]

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
