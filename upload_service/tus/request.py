"""One tus request as the handler sees it: who asks, about which upload, with which headers.

Routes build a ``TusRequest`` from HTTP; the handler reads nothing else of the request but its
body. ``principal`` is the caller as authentication established it (``auth.principal``).
"""

from __future__ import annotations

from dataclasses import dataclass

from upload_service.auth.principal import ANONYMOUS, Principal
from upload_service.tus.checksum import Checksum, parse_checksum
from upload_service.tus.endpoint import NO_ENDPOINT, Endpoint
from upload_service.tus.protocol import OFFSET_CONTENT_TYPE, TUS_VERSION, parse_uint


@dataclass(frozen=True, slots=True)
class TusHeaders:
    """Raw values of the request headers the protocol reads (None when absent)."""

    tus_resumable: str | None = None
    content_type: str | None = None
    content_length: str | None = None
    upload_length: str | None = None
    upload_defer_length: str | None = None
    upload_offset: str | None = None
    upload_metadata: str | None = None
    upload_checksum: str | None = None
    upload_concat: str | None = None
    # the IETF resumable-upload draft's fields (``tus/draft.py``); tus 1.0 reads none of them
    draft_interop_version: str | None = None
    upload_complete: str | None = None  # interop 4 and later
    upload_incomplete: str | None = None  # interop 3
    content_digest: str | None = None
    repr_digest: str | None = None


NO_HEADERS = TusHeaders()


@dataclass(frozen=True, slots=True)
class TusRequest:
    """A request for one upload (``upload_id``) or for the endpoint (creation: None)."""

    upload_id: str | None = None
    headers: TusHeaders = NO_HEADERS
    principal: Principal = ANONYMOUS
    endpoint: Endpoint = NO_ENDPOINT

    @property
    def target(self) -> str:
        """The upload this request is about (a request for the endpoint has none)."""
        if self.upload_id is None:
            raise TypeError("this request names no upload")
        return self.upload_id


def request_checksum(headers: TusHeaders) -> Checksum | None:
    if headers.upload_checksum is None:
        return None
    return parse_checksum(headers.upload_checksum)


def request_content_length(headers: TusHeaders) -> int | None:
    if headers.content_length is None:
        return None
    return parse_uint("Content-Length", headers.content_length)


def declaring_end(offset: int) -> TusHeaders:
    """The headers of the empty PATCH a tus client sends to declare a deferred length at the
    offset its upload reached: the upload is complete at that length."""
    size = str(offset)
    return TusHeaders(
        tus_resumable=TUS_VERSION,
        content_type=OFFSET_CONTENT_TYPE,
        upload_offset=size,
        upload_length=size,
    )
