"""One tus request as the handler sees it: who asks, about which upload, with which headers.

Routes build a ``TusRequest`` from HTTP; the handler reads nothing else of the request but its
body. ``Principal`` is the caller as authentication established it; ``ANONYMOUS`` is the caller of
a service that runs open (no authentication configured), who may reach every upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from upload_service.tus.endpoint import NO_ENDPOINT, Endpoint


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


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller. ``owner`` is None only for the anonymous caller of an open service, and for
    the bearer of a signed download URL, who reaches the one upload named by ``only``.

    ``max_size`` and ``allowed_types`` (parsed patterns, see ``content_types``) are this caller's
    own caps on the uploads it creates, on top of the service's (None / empty: none of its own).
    """

    owner: str | None = None
    max_size: int | None = None
    allowed_types: tuple[str, ...] = ()
    only: str | None = None

    def may_access(self, owner: str | None) -> bool:
        """Whether this caller may reach an upload owned by ``owner``."""
        return self.owner is None or self.owner == owner

    def may_reach(self, upload_id: str, owner: str | None) -> bool:
        """Whether this caller may reach the upload ``upload_id`` owned by ``owner``."""
        return (self.only is None or self.only == upload_id) and self.may_access(owner)


ANONYMOUS = Principal()
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
