"""``serve``'s HTTP protocol: running uploads are drained the moment uvicorn begins to shut down.

On SIGTERM or SIGINT uvicorn stops accepting connections, asks every open connection to shut down,
waits up to ``timeout_graceful_shutdown`` (``UPLOAD_SHUTDOWN_GRACE``) for in-flight requests,
cancels what is left, and only then runs the lifespan's shutdown. A PATCH streaming a large body
would use up the whole grace and be cancelled; so when its connection is asked to shut down, the
app's drain hook runs first: every running PATCH lets go through the path a preempting request
uses, makes its bytes durable, commits and answers 204 with its offset, and the wait is short.

The hook travels in the ASGI lifespan state (``app.DRAIN``, set by the app's lifespan), and the
protocol is uvicorn's own with that one call added, so it works in every worker process of
``--workers`` alike: each drains its own requests when the supervisor passes the signal on.

It also hands request bodies on without copying them. uvicorn gathers the pieces httptools parses
in a bytearray (a copy) and gives the app ``bytes()`` of it (a second copy): for a PATCH that is
two more passes over every byte on the event loop, and two more buffers per connection held at
once. Here the pieces are kept as they came (``BodyPieces``) and a single piece, the usual case,
is the ``body`` of the ASGI message itself; several are joined once.

And it gives a client ``UPLOAD_HEADER_TIMEOUT`` seconds (``app.HEADER_TIMEOUT`` in the lifespan
state) to send a request's headers, counted from the connection and again from each request's
first byte: uvicorn itself waits forever for them, so a slowloris client, or a connection that
never asks, would be held for good. Past it the client is answered 408 and disconnected. The
body has its own idle timeout (``UPLOAD_BODY_IDLE_TIMEOUT``, in the handler).

Last, it offers each request a sender of interim (1xx) responses, which ASGI has no message
for (``ops.interim``): the IETF draft's ``104 (Upload Resumption Supported)`` goes out through it
while the request's body is still arriving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from upload_service.app import DRAIN, HEADER_TIMEOUT
from upload_service.ops.interim import INTERIM, interim_response

TOO_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 33\r\n\r\nthe request headers took too long"
)


class BodyPieces:
    """What uvicorn's request cycle holds of a body between two ``receive`` calls, in place of its
    bytearray: the cycle adds pieces (``+=``), asks the size (``len``) against its high-water mark,
    and turns it into the message's ``body`` (``bytes()``)."""

    __slots__ = ("_pieces", "_size")

    def __init__(self, start: bytes | bytearray = b"") -> None:
        self._pieces: list[bytes] = [bytes(start)] if start else []
        self._size = len(start)

    def __iadd__(self, piece: bytes) -> BodyPieces:
        if piece:
            self._pieces.append(piece)
            self._size += len(piece)
        return self

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        pieces = self._pieces
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]
        return b"".join(pieces)


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()
        self._offer_interim()

    def _offer_interim(self) -> None:
        """The request's interim-response sender (``ops.interim``), in its scope before its app
        task first runs. It writes only while the request's final response has not begun, so a
        1xx can never land inside another answer (a pipelined request's cycle waits unrun)."""
        cycle = self.cycle
        scope = self.scope
        if cycle is None or cycle.scope is not scope or scope.get("http_version") == "1.0":
            return  # an upgrade, or HTTP/1.0, which has no 1xx
        transport = self.transport

        def send_interim(status: int, reason: str, headers: Sequence[tuple[str, str]]) -> None:
            message = interim_response(status, reason, headers)  # ValueError before any write
            if not (cycle.response_started or cycle.disconnected or transport.is_closing()):
                transport.write(message)

        extensions: dict[str, dict[object, object]] = scope.setdefault("extensions", {})
        extensions[INTERIM] = {"send": send_interim}

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        timeout = self.app_state.get(HEADER_TIMEOUT)
        self._disarm_header_timer()
        if timeout:
            self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(TOO_SLOW)
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle.body, BodyPieces):  # a new cycle, or a receive just took the body
            cycle.body = BodyPieces(cycle.body)  # type: ignore[assignment]
        super().on_body(body)

    def shutdown(self) -> None:
        drain: Callable[[], object] | None = self.app_state.get(DRAIN)
        if drain is not None:
            drain()  # idempotent: every connection's shutdown calls it
        super().shutdown()
