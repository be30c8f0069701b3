"""Which media types an upload may have (``UPLOAD_ALLOWED_TYPES``), checked twice before any byte
is stored: the type the client declares in ``Upload-Metadata`` at creation, and the type the first
bytes of the file show (``sniff.Sniffer``) on the request that carries offset 0.

Media types compare case-insensitively and without parameters (``video/MP4; codecs=x`` is
``video/mp4``); ``video/*`` allows every ``video/`` type and ``*/*`` any type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio

from upload_service.errors import UnsupportedMediaType
from upload_service.uploads import Metadata

if TYPE_CHECKING:
    from upload_service.tus.sniff import Sniffer

_TOKEN = r"[a-z0-9!#$&^_.+-]+"
_PATTERN = re.compile(rf"\*/\*|{_TOKEN}/\*|{_TOKEN}/{_TOKEN}")
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")

# Metadata keys that declare a file's type: Uppy sends ``filetype``, tus-js-client whatever the
# application gives (commonly ``filetype``); the others are what downloads read the type from.
DECLARED_TYPE_KEYS = ("filetype", "mimetype", "mimeType", "contentType", "type")
# What a file the sniffer cannot identify counts as: allowing it lets such files through.
UNKNOWN_TYPE = "application/octet-stream"


def parse_allowed_types(text: str) -> tuple[str, ...]:
    """The setting's comma-separated list, lower-cased; empty text means any type.
    Raises ``ValueError`` naming the malformed entry."""
    if not text.strip():
        return ()
    patterns: list[str] = []
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            raise ValueError("has an empty entry (two commas in a row, or one at an end)")
        if not _PATTERN.fullmatch(entry):
            raise ValueError(
                f"{raw.strip()[:60]!r} is not a media type (video/mp4) or a wildcard (video/*)"
            )
        patterns.append(entry)
    return tuple(dict.fromkeys(patterns))


def media_type(value: str) -> str:
    """``value`` without parameters, lower-cased (``Video/MP4; codecs=x`` -> ``video/mp4``)."""
    return value.split(";", 1)[0].strip().lower()


def _matches(patterns: tuple[str, ...], value: str) -> bool:
    wanted = media_type(value)
    if not _MEDIA_TYPE.fullmatch(wanted):
        return False
    major = wanted.partition("/")[0]
    return any(pattern in ("*/*", wanted) or pattern == f"{major}/*" for pattern in patterns)


@dataclass(frozen=True, slots=True)
class AllowedTypes:
    patterns: tuple[str, ...] = ()
    # further lists a type must match as well (a caller's own restriction on top of the service's)
    also: tuple[tuple[str, ...], ...] = ()

    @property
    def restricted(self) -> bool:
        return bool(self.patterns) or bool(self.also)

    def allows(self, value: str) -> bool:
        return all(
            _matches(patterns, value) for patterns in (self.patterns, *self.also) if patterns
        )

    def narrowed(self, patterns: tuple[str, ...]) -> AllowedTypes:
        """These types that ``patterns`` allows too (empty ``patterns``: these types)."""
        if not patterns:
            return self
        return replace(self, also=(*self.also, patterns))

    def __str__(self) -> str:
        lists = [", ".join(patterns) for patterns in (self.patterns, *self.also) if patterns]
        return " and ".join(f"({text})" if len(lists) > 1 else text for text in lists) or "*/*"


@dataclass(frozen=True, slots=True)
class ContentRules:
    """The allowed types and the sniffer that tells a file's type from its first bytes."""

    allowed: AllowedTypes
    sniffer: Sniffer

    @property
    def restricted(self) -> bool:
        return self.allowed.restricted

    @property
    def head_size(self) -> int:
        return self.sniffer.head_size

    def narrowed(self, patterns: tuple[str, ...]) -> ContentRules:
        """These rules, with only the types ``patterns`` allows too (a caller's own caps)."""
        if not patterns:
            return self
        return replace(self, allowed=self.allowed.narrowed(patterns))

    def check_declared(self, metadata: Metadata) -> None:
        """415 when the metadata declares a type that is not allowed. A missing or empty type
        passes: browsers send an empty ``filetype`` for files they cannot type, and the first
        bytes are checked anyway."""
        if not self.restricted:
            return
        for key in DECLARED_TYPE_KEYS:
            raw = metadata.get(key)
            value = "" if raw is None else raw.decode("utf-8", errors="replace").strip()
            if value and not self.allowed.allows(value):
                raise UnsupportedMediaType(
                    f"Upload-Metadata {key} {value[:60]!r} is not an allowed type "
                    f"(allowed: {self.allowed})"
                )

    async def check_head(self, head: bytes, *, short: bool) -> None:
        """415 unless the file's first bytes show an allowed type (or, for bytes no rule
        recognises, unless ``application/octet-stream`` is allowed). ``short``: fewer bytes than
        the sniffer wants arrived and the file goes on past them."""
        if not self.restricted or not head:
            return
        found = await anyio.to_thread.run_sync(self.sniffer.sniff, head[: self.head_size])
        if not found:
            if self.allowed.allows(UNKNOWN_TYPE):
                return
            hint = (
                f"; send at least its first {self.head_size} bytes in the first request"
                if short
                else ""
            )
            raise UnsupportedMediaType(
                f"the file's first bytes are not of a known type (allowed: {self.allowed}){hint}"
            )
        if not any(self.allowed.allows(kind) for kind in found):
            raise UnsupportedMediaType(
                f"the file's content is {found[0]}, which is not allowed (allowed: {self.allowed})"
            )
