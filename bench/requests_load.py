"""The load of scenario 13, ``requests``: tus requests from many clients, as a process of its own.

    python -m bench.requests_load --url URL --files-path /files/ --pid PID --kind cycle \\
        --clients 50 --seconds 20 [--pool N] [--timeout S]

Each client holds one keep-alive HTTP/1.1 connection (raw asyncio streams on uvloop, requests
encoded once, nothing parsed but the status line and the few headers tus needs), so the load costs
little and none of it runs in the bench's own process. Uploads a kind needs are made first
(``--pool`` per client for ``patch`` and ``delete``); then the server's CPU (its process tree, from
``/proc``) is read, every client repeats its unit of work until ``--seconds`` have passed and
finishes the one it is in, and the CPU is read again once the last one has. One JSON line on stdout
says what happened (``LoadResult``).

Kinds (the unit of work of each client):

- ``cycle``: POST an upload of 1 MiB, PATCH it in four 256 KiB pieces, HEAD, DELETE. The cycle
  counts once the HEAD and the DELETE are answered; a POST or PATCH answered otherwise than
  expected abandons it.
- ``post``: a POST (no body); ``head``: a HEAD of the client's upload; ``patch``: a 256 KiB PATCH
  at the next offset of the client's current upload, the next upload of its pool once one is full;
  ``delete``: a DELETE of the next upload of its pool; ``get``: a GET of the client's finished
  upload of ``GET_BYTES``. A client whose pool runs out creates an upload in the measured time
  (``created_in_phase`` says how often).

Expected answers: POST 201, PATCH 204, HEAD 200, DELETE 204, GET 200. A 503 is shedding, counted
apart (the client pauses ``PAUSE`` and goes on); any other answer, a broken connection or a
timeout is an error (the client reconnects on its next request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urljoin, urlsplit

from bench import procfs
from bench.scenarios import _percentile

UPLOAD_BYTES = 1 << 20
PIECE_BYTES = 256 * 1024
PIECES = UPLOAD_BYTES // PIECE_BYTES
GET_BYTES = 16 * 1024
PAUSE = 0.05  # seconds a client waits after a 503 or a broken connection
GET_READY_WAIT = 10.0  # seconds a finished upload may take to answer GET with 200
KINDS = ("cycle", "post", "head", "patch", "delete", "get")
EXPECTED = {"POST": 201, "PATCH": 204, "HEAD": 200, "DELETE": 204, "GET": 200}


@dataclass(frozen=True, slots=True)
class LoadResult:
    kind: str
    clients: int
    seconds: float  # from the common start to the last client's end
    done: int  # cycles counted (cycle) or answers as expected (the other kinds)
    answered: int  # requests answered, 503s not included
    errors: int
    shed: int  # 503 answers
    server_cpu_s: float  # the server's process tree, user + system, over ``seconds``
    client_cpu_s: float  # this process's
    created_in_phase: int = 0  # uploads a client made in the measured time (its pool ran out)
    error_kinds: str = ""  # "HEAD 400: 12; PATCH timeout: 1"
    head_p50_ms: float | None = None  # of the HEADs of the cycles
    head_p99_ms: float | None = None
    unsupported: str = ""  # why nothing was measured (a server without GET)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError(f"not a load result: {text[:200]}")
        return cls(**document)


class Broken(Exception):
    """The connection failed (refused, reset, closed early, a malformed answer) or timed out."""


class SetupError(Exception):
    """The uploads a kind needs could not be made."""


class Unsupported(Exception):
    """The server does not offer what the kind measures (GET of a finished upload)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    location: str


class Http:
    """One keep-alive HTTP/1.1 connection, opened on first use and again after a failure."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def send(self, method: str, head: bytes, body: bytes = b"") -> Answer:
        try:
            async with asyncio.timeout(self.timeout):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                assert self._reader is not None
                self._writer.writelines((head, body) if body else (head,))
                await self._writer.drain()
                return await self._answer(self._reader, method)
        except TimeoutError as exc:
            self.close()
            raise Broken("timeout") from exc
        except (OSError, EOFError, ValueError, IndexError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise Broken(type(exc).__name__) from exc

    async def _answer(self, reader: asyncio.StreamReader, method: str) -> Answer:
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if value:
                headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or status < 200:
            pass
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")  # no trailers are sent to a tus client
        elif b"content-length" in headers:
            await reader.readexactly(int(headers[b"content-length"]))
        else:  # the body runs to the end of the connection
            await reader.read()
            headers[b"connection"] = b"close"
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return Answer(status, headers.get(b"location", b"").decode("latin-1"))


@dataclass(slots=True)
class Tally:
    done: int = 0
    answered: int = 0
    shed: int = 0
    created_in_phase: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    head_seconds: list[float] = field(default_factory=list)


class Load:
    """The clients of one run and what they need: request heads, pools, the tally."""

    def __init__(self, args: argparse.Namespace) -> None:
        parts = urlsplit(args.url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.base_url: str = args.url
        self.files_path: str = args.files_path
        self.host = f"{parts.hostname}:{parts.port}"
        self.clients = [Http(parts.hostname, parts.port, args.timeout) for _ in range(args.clients)]
        self.tally = Tally()
        self.piece = os.urandom(PIECE_BYTES)
        self.post_head = self.head("POST", self.files_path, **{"Upload-Length": str(UPLOAD_BYTES)})

    def head(self, method: str, path: str, **headers: str) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", "Tus-Resumable: 1.0.0"]
        if method in ("POST", "DELETE") and "Content-Length" not in headers:
            headers["Content-Length"] = "0"
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def patch_head(self, path: str, offset: int, size: int = PIECE_BYTES) -> bytes:
        return self.head(
            "PATCH",
            path,
            **{
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(size),
            },
        )

    def path_of(self, answer: Answer) -> str | None:
        if not answer.location:
            return None
        return urlsplit(urljoin(self.base_url + "/", answer.location)).path

    async def ask(self, http: Http, method: str, head: bytes, body: bytes = b"") -> Answer | None:
        """One request, tallied: the answer (a 503 too), or None when the connection failed."""
        try:
            answer = await http.send(method, head, body)
        except Broken as exc:
            self.tally.errors[f"{method} {exc}"] += 1
            await asyncio.sleep(PAUSE)
            return None
        if answer.status == 503:
            self.tally.shed += 1
            await asyncio.sleep(PAUSE)
            return answer
        self.tally.answered += 1
        if answer.status != EXPECTED[method]:
            self.tally.errors[f"{method} {answer.status}"] += 1
        return answer

    async def create(self, http: Http, size: int = UPLOAD_BYTES) -> str:
        """An upload made outside the measured time; ``SetupError`` if the server will not."""
        head = self.post_head
        if size != UPLOAD_BYTES:
            head = self.head("POST", self.files_path, **{"Upload-Length": str(size)})
        try:
            answer = await http.send("POST", head)
        except Broken as exc:
            raise SetupError(f"POST (before the measurement): {exc}") from exc
        path = self.path_of(answer)
        if answer.status != 201 or path is None:
            raise SetupError(f"POST (before the measurement) answered {answer.status}")
        return path


class Client:
    """One client's state and unit of work for its kind."""

    def __init__(self, load: Load, http: Http, kind: str) -> None:
        self.load = load
        self.http = http
        self.pool: list[str] = []
        self.path = ""
        self.offset = 0
        self.unit: Callable[[], Awaitable[None]] = getattr(self, f"_{kind}")

    async def prepare(self, kind: str, pool: int) -> None:
        load = self.load
        if kind == "head":
            self.path = await load.create(self.http)
        elif kind in ("patch", "delete"):
            self.pool = [await load.create(self.http) for _ in range(max(pool, 1))]
            self.path = self.pool.pop() if kind == "patch" else ""
        elif kind == "get":
            self.path = await load.create(self.http, GET_BYTES)
            body = load.piece[:GET_BYTES]
            answer = await self.http.send("PATCH", load.patch_head(self.path, 0, GET_BYTES), body)
            if answer.status != 204:
                raise SetupError(f"PATCH of the file to GET answered {answer.status}")
            await self._wait_for_get()

    async def _wait_for_get(self) -> None:
        """A finished upload may be verified before it is served (503 meanwhile)."""
        deadline = time.monotonic() + GET_READY_WAIT
        head = self.load.head("GET", self.path)
        while True:
            answer = await self.http.send("GET", head)
            if answer.status == 200:
                return
            if answer.status != 503 or time.monotonic() > deadline:
                raise Unsupported(f"GET of a finished upload answered {answer.status}")
            await asyncio.sleep(PAUSE)

    async def _next_upload(self) -> str:
        if self.pool:
            return self.pool.pop()
        self.load.tally.created_in_phase += 1
        return await self.load.create(self.http)

    async def _cycle(self) -> None:
        load = self.load
        answer = await load.ask(self.http, "POST", load.post_head)
        path = None if answer is None or answer.status != 201 else load.path_of(answer)
        if path is None:
            return
        for index in range(PIECES):
            head = load.patch_head(path, index * PIECE_BYTES)
            answer = await load.ask(self.http, "PATCH", head, load.piece)
            if answer is None or answer.status != 204:
                return
        started = time.perf_counter()
        answer = await load.ask(self.http, "HEAD", load.head("HEAD", path))
        if answer is None or answer.status == 503:
            return
        load.tally.head_seconds.append(time.perf_counter() - started)
        answer = await load.ask(self.http, "DELETE", load.head("DELETE", path))
        if answer is not None and answer.status != 503:
            load.tally.done += 1

    async def _one(self, method: str, head: bytes, body: bytes = b"") -> Answer | None:
        answer = await self.load.ask(self.http, method, head, body)
        if answer is not None and answer.status == EXPECTED[method]:
            self.load.tally.done += 1
        return answer

    async def _post(self) -> None:
        await self._one("POST", self.load.post_head)

    async def _head(self) -> None:
        await self._one("HEAD", self.load.head("HEAD", self.path))

    async def _get(self) -> None:
        await self._one("GET", self.load.head("GET", self.path))

    async def _patch(self) -> None:
        if self.offset >= UPLOAD_BYTES:
            self.path, self.offset = await self._next_upload(), 0
        head = self.load.patch_head(self.path, self.offset)
        answer = await self._one("PATCH", head, self.load.piece)
        if answer is not None and answer.status == 204:
            self.offset += PIECE_BYTES
        elif answer is None or answer.status != 503:
            self.offset = UPLOAD_BYTES  # its offset is in doubt: go on with the next upload

    async def _delete(self) -> None:
        path = await self._next_upload()
        await self._one("DELETE", self.load.head("DELETE", path))

    async def run_until(self, deadline: float) -> None:
        while time.perf_counter() < deadline:
            try:
                await self.unit()
            except SetupError as exc:  # an upload made in the measured time was refused
                self.load.tally.errors[str(exc)] += 1
                await asyncio.sleep(PAUSE)


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure(args: argparse.Namespace) -> LoadResult:
    load = Load(args)
    clients = [Client(load, http, args.kind) for http in load.clients]
    tally = load.tally

    def result(seconds: float, server_cpu: float, client_cpu: float, **more: str) -> LoadResult:
        heads = [value * 1000 for value in tally.head_seconds]
        errors = "; ".join(f"{kind}: {count}" for kind, count in tally.errors.most_common())
        return LoadResult(
            kind=args.kind,
            clients=args.clients,
            seconds=seconds,
            done=tally.done,
            answered=tally.answered,
            errors=sum(tally.errors.values()),
            shed=tally.shed,
            server_cpu_s=server_cpu,
            client_cpu_s=client_cpu,
            created_in_phase=tally.created_in_phase,
            error_kinds=errors,
            head_p50_ms=_percentile(heads, 0.50) if heads else None,
            head_p99_ms=_percentile(heads, 0.99) if heads else None,
            **more,
        )

    try:
        await asyncio.gather(*(client.prepare(args.kind, args.pool) for client in clients))
        # every client connected before the clock starts (an OPTIONS opens what is not yet)
        options = load.head("OPTIONS", load.files_path)
        await asyncio.gather(*(http.send("OPTIONS", options) for http in load.clients))
    except Unsupported as exc:
        for http in load.clients:
            http.close()
        return result(0.0, 0.0, 0.0, unsupported=str(exc))
    cpu_before, own_before = procfs.cpu_times(args.pid).total, _own_cpu()
    started = time.perf_counter()
    deadline = started + args.seconds
    await asyncio.gather(*(client.run_until(deadline) for client in clients))
    seconds = time.perf_counter() - started
    server_cpu = procfs.cpu_times(args.pid).total - cpu_before
    own = _own_cpu() - own_before
    for http in load.clients:
        http.close()
    return result(seconds, server_cpu, own)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.requests_load", description=__doc__)
    parser.add_argument("--url", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--files-path", required=True, help="where POST creates uploads")
    parser.add_argument("--pid", type=int, required=True, help="the server's process")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--pool", type=int, default=1, help="uploads made first, per client")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for one request")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            result = runner.run(measure(args))
        except (SetupError, Broken) as exc:
            print(f"requests_load: {args.kind}: {exc}", file=sys.stderr)
            return 1
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
