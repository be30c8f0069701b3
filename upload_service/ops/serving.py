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
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from upload_service.app import DRAIN


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
