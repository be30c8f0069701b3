"""Readers of a request body, as ``AsyncIterator[bytes]`` over the one the route hands in:
``CountedBody`` reports every chunk as it is read, ``LimitedBody`` counts and cuts at a limit,
``EndedBody`` tells a body that ended from one cut short; ``no_body`` is the empty body. No reader
is an async generator: one left unfinished when a request ends early would be finalised
later, outside the request."""

from __future__ import annotations

from collections.abc import AsyncIterator

from upload_service.errors import ServiceError, TooLarge
from upload_service.events import Events
from upload_service.tus.inflight import Reading


class LimitedBody:
    """The request body, counted and cut at ``limit`` bytes: the chunk that runs past it is
    truncated and sets ``overflow`` (``refusal``, by default a 413), and nothing is read after
    it."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        limit: int | None,
        refusal: ServiceError | None = None,
    ) -> None:
        self._chunks = aiter(body)
        self._limit = limit
        self._refusal = refusal
        self.received = 0
        self.overflow: ServiceError | None = None

    def __aiter__(self) -> LimitedBody:
        return self

    async def __anext__(self) -> bytes:
        if self.overflow is not None:
            raise StopAsyncIteration
        chunk = await anext(self._chunks)
        if self._limit is not None and self.received + len(chunk) > self._limit:
            chunk = chunk[: self._limit - self.received]
            self.overflow = self._refusal or TooLarge(
                f"request body exceeds the {self._limit} bytes left"
            )
        self.received += len(chunk)
        return chunk


class CountedBody:
    """Reports every chunk of a request body as it is read (not an async generator: one left
    unfinished when a request ends early would be finalised later, outside the request)."""

    def __init__(
        self, body: AsyncIterator[bytes], events: Events, reading: Reading | None = None
    ) -> None:
        self._body = body
        self._events = events
        self._reading = reading  # told when the body ends, breaks off or fails

    def __aiter__(self) -> CountedBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._body.__anext__()
        except BaseException:
            if self._reading is not None:
                self._reading.done()
            raise
        self._events.received(len(chunk))
        return chunk


class EndedBody:
    """A body that remembers whether it ended (its last byte arrived) or was cut short."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self.ended = False

    def __aiter__(self) -> EndedBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._body.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise


async def no_body() -> AsyncIterator[bytes]:
    """An empty request body (the declaring PATCH of ``request.declaring_end``)."""
    return
    yield b""  # an async generator without items
