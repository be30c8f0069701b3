"""The pre-create hook: asked about an upload before anything of it is created.

It may let the creation go on, go on with amended metadata (which replaces the client's and is
checked with the same limits), or refuse it with a 4xx status and a one-line message, which the
client gets. It fails closed: an unreachable hook, a timeout, a 5xx or an answer it cannot read
is a 503 with ``Retry-After``, and nothing is created.

``PreCreateHook`` is what the tus ``Creator`` calls; ``NO_PRE_CREATE`` (the default) lets
everything through unchanged. ``CallablePreCreate`` calls a Python function
(``python:package.module:function``); ``http.HttpPreCreate`` POSTs JSON to a URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from upload_service.errors import BadRequest, Rejected, ServiceError, Unavailable
from upload_service.events import NO_EVENTS, Events
from upload_service.hooks.callables import call_hook
from upload_service.tus.protocol import Concat, decode_metadata, encode_metadata, metadata_text
from upload_service.tus.request import TusRequest
from upload_service.uploads import Metadata

logger = logging.getLogger("upload_service.hooks")

RETRY_AFTER = "5"  # seconds a client is told to wait while the hook cannot be asked
MESSAGE_CHARS = 200


@dataclass(frozen=True, slots=True)
class PreCreate:
    """The upload to be, as the client asked for it (and as a pre-create callable gets it)."""

    length: int | None  # None: deferred (Upload-Defer-Length), or a final upload's (its parts')
    metadata: Metadata  # raw values; ``text_metadata`` as UTF-8 text
    concat: str | None = None  # "partial", "final" or None
    parts: tuple[str, ...] = ()  # a final upload's part URLs, as the client sent them
    owner: str | None = None  # the caller's identity, when authentication establishes one
    ticket: str | None = None  # the upload ticket the caller holds, if it is a ticket's bearer

    @property
    def text_metadata(self) -> dict[str, str | None]:
        return metadata_text(self.metadata)

    def as_json(self) -> dict[str, object]:
        return {
            "length": self.length,
            "metadata": self.text_metadata,
            "concat": self.concat,
            "parts": list(self.parts),
            "owner": self.owner,
            "ticket": self.ticket,
        }


class Reject(Exception):
    """Raised by a pre-create callable to refuse the creation with ``status`` (4xx)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        if not 400 <= status <= 499:
            raise ValueError("a rejection's status is a 4xx")
        self.message = message
        self.status = status


class PreCreateHook(Protocol):
    async def check(self, proposal: PreCreate) -> Metadata:
        """The metadata to create the upload with: the proposal's, or the hook's amendment
        (validated with the creation limits: ``BadRequest``). Raises ``Rejected`` (the hook's
        4xx and message) to refuse, ``Unavailable`` (503, ``Retry-After``) when the hook cannot
        be asked. Called on the event loop before anything is created; never blocks it."""
        ...


class NoPreCreate:
    async def check(self, proposal: PreCreate) -> Metadata:
        return proposal.metadata


NO_PRE_CREATE: PreCreateHook = NoPreCreate()


@dataclass(frozen=True, slots=True)
class MetadataLimits:
    max_bytes: int
    max_keys: int


def unavailable(reason: str) -> Unavailable:
    return Unavailable(
        f"pre-create hook unavailable: {one_line(reason)}", headers={"Retry-After": RETRY_AFTER}
    )


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return "".join(char if char.isprintable() else " " for char in line)[:MESSAGE_CHARS]


def amended(value: object, limits: MetadataLimits) -> Metadata:
    """A hook's metadata (text or bytes values, or None) checked as a client's would be."""
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise unavailable("its metadata is not an object of text keys")
    metadata: Metadata = {}
    for key, item in value.items():
        if isinstance(item, str):
            metadata[key] = item.encode()
        elif item is None or isinstance(item, bytes):
            metadata[key] = item
        else:
            raise unavailable(f"its metadata value for {key!r} is not text or null")
    try:
        return decode_metadata(
            encode_metadata(metadata), max_bytes=limits.max_bytes, max_keys=limits.max_keys
        )
    except BadRequest as exc:
        raise BadRequest(f"metadata from the pre-create hook: {exc.message}") from exc


class CallablePreCreate:
    """``function(PreCreate)`` returns None (go on) or the metadata to use instead; it raises
    ``Reject`` to refuse. Any other exception, or a timeout, is a 503 (logged)."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        timeout: float,
        limits: MetadataLimits,
        events: Events = NO_EVENTS,
    ) -> None:
        self._function = function
        self._timeout = timeout
        self._limits = limits
        self._events = events

    async def check(self, proposal: PreCreate) -> Metadata:
        try:
            result = await call_hook(self._function, proposal, self._timeout)
        except Reject as exc:
            self._events.pre_create_hook("rejected")
            raise Rejected(one_line(exc.message) or "rejected", status=exc.status) from exc
        except TimeoutError as exc:
            self._events.pre_create_hook("unavailable")
            raise unavailable(f"it took longer than {self._timeout:g} s") from exc
        except Exception as exc:
            # a bug in the hook: fail closed, and say so where its author will look
            logger.exception("the pre-create hook failed")
            self._events.pre_create_hook("unavailable")
            raise unavailable(f"it raised {exc.__class__.__name__}") from exc
        if result is None:
            self._events.pre_create_hook("allowed")
            return proposal.metadata
        try:
            metadata = amended(result, self._limits)
        except ServiceError:
            self._events.pre_create_hook("rejected")
            raise
        self._events.pre_create_hook("amended")
        return metadata


def pre_create_of(
    request: TusRequest, length: int | None, concat: Concat | None, metadata: Metadata
) -> PreCreate:
    """What the hook is told about a creation request (its headers already parsed)."""
    return PreCreate(
        length=length,
        metadata=metadata,
        concat=None if concat is None else ("final" if concat.final else "partial"),
        parts=() if concat is None else concat.urls,
        owner=request.principal.owner,
        ticket=request.principal.ticket,
    )
