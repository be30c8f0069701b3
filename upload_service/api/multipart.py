"""Streaming ``multipart/form-data``: python-multipart's push parser fed from the request body,
turned into parts read one after the other, each part's bytes as an ``AsyncIterator[bytes]``.

Nothing is spooled: a request chunk is parsed when the reader of the current part asks for more,
so a file part streams on to wherever its reader sends it, at the pace it is consumed. The parser's
state after the body ends tells a truncated form (no closing boundary) from a complete one.
"""

from __future__ import annotations

import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from upload_service.errors import BadRequest, UnsupportedMediaType

MAX_HEADER_BYTES = 16 * 1024  # of one part's headers, all of them together


@dataclass(frozen=True, slots=True)
class PartInfo:
    """A part's headers: its field ``name``, the ``filename`` of a file part (None for a text
    field) and its declared ``content_type`` (None when absent)."""

    name: str
    filename: str | None
    content_type: str | None


def form_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type (415 for another type, 400 for a
    missing or malformed boundary)."""
    media, options = parse_options_header(content_type or "")
    if media.strip().lower() != b"multipart/form-data":
        raise UnsupportedMediaType(
            "this endpoint takes multipart/form-data (tus clients upload to the tus endpoint)"
        )
    boundary = options.get(b"boundary", b"")
    # RFC 2046 section 5.1.1: 1 to 70 characters, not ending in a space
    if not 0 < len(boundary) <= 70 or boundary.endswith(b" ") or b"\r" in boundary:
        raise BadRequest("multipart/form-data needs a boundary of 1 to 70 characters")
    return boundary


# ("headers", a part's headers) | ("data", bytes) | ("end", b""): queued while a chunk is parsed
_Event = tuple[str, "bytes | PartInfo"]


class FormReader:
    """The parts of one form body, in order: ``next_part`` returns the next part's headers (None
    after the closing boundary), ``data`` iterates its bytes; the previous part's bytes must have
    been read to their end first. Malformed or truncated bodies raise ``BadRequest``."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = aiter(body)
        self._events: deque[_Event] = deque()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._ended = False  # the closing boundary was parsed
        self._in_part = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    # -- parser callbacks (synchronous, while ``write`` runs) -------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise BadRequest(f"a form part's headers exceed {MAX_HEADER_BYTES} bytes")

    def _header_end(self) -> None:
        name = self._header_field.decode("latin-1").strip().lower()
        # latin-1: the bytes as they came; names and filenames are decoded as UTF-8 when parsed
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        self._events.append(("headers", part_info(self._headers)))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", data[start:end]))

    def _part_end(self) -> None:
        self._events.append(("end", b""))

    def _end(self) -> None:
        self._ended = True

    # -- reading ----------------------------------------------------------------------------------

    async def _next_event(self) -> _Event | None:
        """The next parser event, reading and parsing more of the body when none is pending;
        None once the closing boundary was parsed and every event taken."""
        while not self._events:
            if self._ended:
                return None
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                raise BadRequest(
                    "the form body ended before its closing boundary (truncated?)"
                ) from None
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise BadRequest(f"malformed multipart/form-data body: {exc}") from None
        return self._events.popleft()

    async def next_part(self) -> PartInfo | None:
        if self._in_part:
            raise RuntimeError("the previous part was not read to its end")
        event = await self._next_event()
        if event is None:
            return None
        info = event[1]
        if not isinstance(info, PartInfo):
            raise BadRequest("malformed multipart/form-data body: data outside a part")
        self._in_part = True
        return info

    def data(self) -> PartData:
        """The current part's bytes, up to its closing boundary."""
        return PartData(self)

    async def _data_chunk(self) -> bytes | None:
        event = await self._next_event()
        if event is None or isinstance(event[1], PartInfo):
            raise BadRequest("malformed multipart/form-data body: a part has no end")
        kind, data = event[0], event[1]
        if kind == "end":
            self._in_part = False
            return None
        return data

    async def read_text(self, limit: int) -> bytes:
        """The current part whole, at most ``limit`` bytes (else ``BadRequest``)."""
        value = bytearray()
        async for chunk in self.data():
            value += chunk
            if len(value) > limit:
                raise BadRequest(
                    f"the form's text fields are longer than the metadata cap ({limit} bytes left)"
                )
        return bytes(value)


class PartData:
    """One part's bytes (not an async generator: see ``tus.body.CountedBody``)."""

    def __init__(self, reader: FormReader) -> None:
        self._reader = reader
        self._done = False

    def __aiter__(self) -> PartData:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        chunk = await self._reader._data_chunk()
        if chunk is None:
            self._done = True
            raise StopAsyncIteration
        return chunk


def part_info(headers: dict[str, str]) -> PartInfo:
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise BadRequest("a form part has no Content-Disposition header")
    kind, options = parse_options_header(disposition)
    if kind.strip().lower() != b"form-data" or b"name" not in options:
        raise BadRequest("a form part's Content-Disposition must be form-data with a name")
    filename: str | None = None
    if b"filename" in options:
        filename = options[b"filename"].decode("utf-8", errors="replace")
    extended = _extended_filename(disposition)  # filename*=UTF-8''... wins (RFC 6266)
    if extended is not None:
        filename = extended
    content_type = headers.get("content-type") or None
    return PartInfo(
        name=options[b"name"].decode("utf-8", errors="replace"),
        filename=filename,
        content_type=content_type,
    )


def _extended_filename(disposition: str) -> str | None:
    for parameter in disposition.split(";"):
        key, _, value = parameter.strip().partition("=")
        if key.strip().lower() == "filename*":
            charset, _, rest = value.strip().strip('"').partition("'")
            _, _, encoded = rest.partition("'")
            if charset.lower() in ("utf-8", ""):
                return urllib.parse.unquote(encoded, errors="replace")
    return None
