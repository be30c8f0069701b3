"""Telling a file's type from its first bytes, and reading those bytes off a request body first.

``Sniffer`` is the small interface the handler sees; ``MagicSniffer`` implements it with
puremagic (pure Python: magic numbers, no libmagic), the only module that imports it.
``HeadReader`` reads the first bytes of a body before anything is written, and replays them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import puremagic

from upload_service.errors import ClientGone

# MPEG transport stream: 188-byte packets, each starting with the sync byte 0x47.
_TS_PACKET = 188
_TS_SYNC = 0x47
_TS_PACKETS_SEEN = 4


class Sniffer(Protocol):
    @property
    def head_size(self) -> int:
        """How many of the first bytes ``sniff`` looks at (the most a request buffers for it)."""
        ...

    def sniff(self, head: bytes) -> tuple[str, ...]:
        """The media types the file whose first bytes are ``head`` looks like, most likely
        first, lower-case; ``()`` when none is recognised. Pure computation, never raises for any
        input; callers run it off the event loop."""
        ...


class MagicSniffer:
    """Magic numbers (puremagic) at the start of the file, plus MPEG-TS, which puremagic
    lacks. Only signatures within the first ``head_size`` bytes count: the file's end is not
    known yet, so matches against its footer are dropped."""

    head_size = 8192

    def sniff(self, head: bytes) -> tuple[str, ...]:
        if not head:
            return ()
        try:
            matches = puremagic.magic_string(head)
        except (puremagic.PureError, ValueError):
            matches = []
        typed = [match for match in matches if match.offset >= 0 and match.mime_type]
        found: list[str] = []
        if typed:
            best = max(match.confidence for match in typed)
            found = [match.mime_type.lower() for match in typed if match.confidence == best]
        if _looks_like_mpeg_ts(head):
            found.append("video/mp2t")
        return tuple(dict.fromkeys(found))


def _looks_like_mpeg_ts(head: bytes) -> bool:
    packets = min(_TS_PACKETS_SEEN, len(head) // _TS_PACKET)
    return packets >= 2 and all(head[i * _TS_PACKET] == _TS_SYNC for i in range(packets))


class HeadReader:
    """Reads at least ``size`` bytes of a body (or all of it, if shorter) before anything is
    written, keeping them in memory (``size`` plus at most one chunk); ``rest()`` then yields
    the whole body as if nothing had been read. A client gone while the head was read is
    raised again from ``rest()``, after the head."""

    def __init__(self, body: AsyncIterator[bytes], size: int) -> None:
        self._chunks = aiter(body)
        self._size = size
        self._head: list[bytes] = []
        self.received = 0
        self.ended = False  # the body ended (or the client went away) within the head
        self._gone = False

    @property
    def head(self) -> bytes:
        return b"".join(self._head)

    async def read(self) -> None:
        """Read the head; a cancelled read keeps what arrived, and ``rest()`` yields just that."""
        try:
            while self.received < self._size:
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    self.ended = True
                    return
                except ClientGone:
                    self.ended = self._gone = True
                    return
                self._head.append(chunk)
                self.received += len(chunk)
        finally:
            if self.received < self._size:
                self.ended = True  # cancelled: the body is not read any further

    async def rest(self) -> AsyncIterator[bytes]:
        for chunk in self._head:
            yield chunk
        if self._gone:
            raise ClientGone
        if self.ended:
            return
        async for chunk in self._chunks:
            yield chunk
