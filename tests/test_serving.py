"""``serve``'s HTTP protocol hands request bodies to the app without copying them.

The protocol is driven here as uvicorn drives it, through ``data_received`` on a transport of the
test's own, so a uvicorn release that changes how a cycle gathers its body fails here, not in the
field. The app records each ``http.request`` message; the spy records each piece httptools parsed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from upload_service.app import HEADER_TIMEOUT
from upload_service.ops.serving import BodyPieces, DrainingHttpToolsProtocol

pytestmark = pytest.mark.anyio


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Spy(DrainingHttpToolsProtocol):
    pieces: list[bytes]

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        super().on_body(body)


def serving(app: Any) -> tuple[Spy, Transport]:
    config = uvicorn.Config(app=app, lifespan="off", log_level="warning")
    protocol = Spy(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocol.pieces = []
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def recording(messages: list[dict[str, Any]], *, start: asyncio.Event | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if start is not None:
            await start.wait()
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


HEAD = b"PATCH /files/x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_piece_the_app_reads_at_once_is_the_message_body_itself() -> None:
    messages: list[dict[str, Any]] = []
    protocol, transport = serving(recording(messages))
    protocol.data_received(HEAD % 10 + b"abcd")
    await settle()
    protocol.data_received(b"efghij")
    await settle()

    assert [m["body"] for m in messages] == [b"abcd", b"efghij"]
    assert all(type(m["body"]) is bytes for m in messages)
    # no copy: the object httptools made is the one the app gets
    assert messages[0]["body"] is protocol.pieces[0]
    assert messages[1]["body"] is protocol.pieces[1]
    assert [m["more_body"] for m in messages] == [True, False]
    assert transport.written.startswith(b"HTTP/1.1 204 ")


async def test_pieces_that_arrive_before_the_app_reads_come_joined_in_order() -> None:
    messages: list[dict[str, Any]] = []
    start = asyncio.Event()
    protocol, transport = serving(recording(messages, start=start))
    protocol.data_received(HEAD % 9 + b"abc")
    protocol.data_received(b"def")
    protocol.data_received(b"ghi")
    await settle()
    start.set()
    await settle()

    assert [m["body"] for m in messages] == [b"abcdefghi"]
    assert type(messages[0]["body"]) is bytes
    assert transport.written.startswith(b"HTTP/1.1 204 ")


async def test_a_body_past_the_high_water_mark_pauses_reading_until_the_app_reads() -> None:
    messages: list[dict[str, Any]] = []
    start = asyncio.Event()
    protocol, transport = serving(recording(messages, start=start))
    size = 160 * 1024
    piece = bytes(range(256)) * 256  # 64 KiB
    protocol.data_received(HEAD % size + piece)
    protocol.data_received(piece)
    await settle()
    assert transport.paused, "more than 64 KiB held: the cycle asks the transport to stop reading"
    start.set()
    await settle()
    assert not transport.paused
    rest = size - 2 * len(piece)
    protocol.data_received(piece[:rest])
    await settle()
    assert b"".join(m["body"] for m in messages) == (piece * 3)[:size]
    assert transport.written.startswith(b"HTTP/1.1 204 ")


def test_body_pieces_count_join_and_hand_over_a_single_piece_as_it_is() -> None:
    pieces = BodyPieces()
    assert len(pieces) == 0
    assert bytes(pieces) == b""
    one = b"x" * 1000
    pieces += one
    pieces += b""  # an empty piece changes nothing
    assert len(pieces) == 1000
    assert bytes(pieces) is one
    pieces += b"yz"
    assert len(pieces) == 1002
    assert bytes(pieces) == one + b"yz"
    assert bytes(BodyPieces(bytearray(b"ab"))) == b"ab"
    assert type(bytes(BodyPieces(bytearray(b"ab")))) is bytes


def timed_serving(app: Any, timeout: float) -> tuple[Spy, Transport]:
    config = uvicorn.Config(app=app, lifespan="off", log_level="warning")
    protocol = Spy(
        config=config,
        server_state=ServerState(),
        app_state={HEADER_TIMEOUT: timeout},
        _loop=asyncio.get_running_loop(),
    )
    protocol.pieces = []
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_headers_that_do_not_come_in_time_are_a_408_and_a_close() -> None:
    for sent in (b"", b"PATCH /files/x HTTP/1.1\r\nHost: t\r\nX-Slow: a"):
        protocol, transport = timed_serving(recording([]), 0.05)
        if sent:
            protocol.data_received(sent)
        await asyncio.sleep(0.2)
        assert transport.closed, sent
        assert bytes(transport.written).startswith(b"HTTP/1.1 408 Request Timeout\r\n"), sent
        assert bytes(transport.written).endswith(b"\r\n\r\nthe request headers took too long")


async def test_headers_in_time_are_served_and_the_timer_is_off() -> None:
    messages: list[dict[str, Any]] = []
    protocol, transport = timed_serving(recording(messages), 0.05)
    protocol.data_received(HEAD % 3 + b"abc")
    await asyncio.sleep(0.2)  # past the timeout: the request was whole long before
    assert bytes(transport.written).startswith(b"HTTP/1.1 204 ")
    assert b"408" not in bytes(transport.written)
    assert [message["body"] for message in messages] == [b"abc"]
