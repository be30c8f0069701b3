"""Floor: a bare ASGI app under uvicorn (uvloop + httptools) that reads and discards every body.

It answers just enough of tus for the benchmark's client: POST creates a made-up upload, PATCH
answers 204 with ``Upload-Offset`` = the request's offset + the bytes it read, GET /healthz 200.
No disk, no database, no validation: the ceiling for any ASGI upload server on uvicorn.

    python bench/apps/asgi_floor.py PORT
"""

from __future__ import annotations

import itertools
import sys

import uvicorn
from starlette.types import Message, Receive, Scope, Send

_ids = itertools.count(1)


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    method: str = scope["method"]
    tus = [(b"tus-resumable", b"1.0.0"), (b"content-length", b"0")]
    if method == "POST":
        location = f"/files/{next(_ids)}".encode()
        await _respond(send, 201, [*tus, (b"location", location), (b"upload-offset", b"0")])
    elif method == "PATCH":
        offset = 0
        for name, value in scope["headers"]:
            if name == b"upload-offset":
                offset = int(value)
        await _respond(send, 204, [*tus, (b"upload-offset", str(offset + received).encode())])
    elif method == "OPTIONS":
        await _respond(
            send, 204, [*tus, (b"tus-version", b"1.0.0"), (b"tus-extension", b"creation")]
        )
    else:
        await _respond(send, 200, tus)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
    )
