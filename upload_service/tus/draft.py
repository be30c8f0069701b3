"""The IETF resumable-upload draft (``draft-ietf-httpbis-resumable-upload``) on the tus endpoint.

A request that carries ``Upload-Draft-Interop-Version`` is served here; one without it stays
tus 1.0. Each request of the draft is translated into the tus request that means the same, run
by the one ``TusHandler`` (its locks, limits, auth, hooks, states and crash stories unchanged),
and its answer rendered as the request's interop version wants it. So an upload made by a draft
client is an upload like any other: listed, verified, shown and downloadable, and it can even
be resumed by a tus client. ``docs/ietf-draft-versions.md`` compares the versions; the rules
each one follows here are the ``Interop`` values below.

- Creation: ``POST`` to the collection, its body the file or the file's start. The upload is
  created before the body is read (after its first bytes only when allowed types are
  configured: they are sniffed first), and ``created`` hands its ``Location`` to the caller,
  which sends the ``104 (Upload Resumption Supported)`` interim response. The body is then
  received exactly as a PATCH's: what became durable stays if the connection breaks.
- ``Upload-Complete: ?1`` (``Upload-Incomplete: ?0`` or none, in interop 3) with a
  ``Content-Length`` fixes the upload's length before the body is read; with a chunked body, it
  is fixed at the offset the body reached, once the body has really ended (a cut body leaves an
  unfinished upload to resume, never a short complete one).
- ``Content-Digest`` (sha-256 or sha-512) is the tus checksum of one request, all or nothing;
  ``Repr-Digest: sha-256`` is the whole file's expected sha256, checked as ``sha256`` metadata
  is, when the upload is verified.

The field values (booleans, digests, metadata) are read in ``draft_fields``. Nothing here knows a
web framework: routes hand it a ``TusRequest`` and the body, and render
the ``TusResponse`` it returns or the ``ServiceError`` (``Problem`` with a JSON body) it raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from upload_service.errors import (
    BadRequest,
    OffsetMismatch,
    ServiceError,
    TooLarge,
    UnsupportedMediaType,
)
from upload_service.tus.body import EndedBody, no_body
from upload_service.tus.draft_fields import (
    PARTIAL_UPLOAD,
    content_checksum,
    parse_boolean,
    render_boolean,
    with_file_type,
    with_repr_digest,
)
from upload_service.tus.protocol import OFFSET_CONTENT_TYPE, TUS_VERSION, parse_uint
from upload_service.tus.request import (
    TusHeaders,
    TusRequest,
    declaring_end,
    request_content_length,
)
from upload_service.tus.types import TusResponse
from upload_service.uploads import Upload, UploadState

if TYPE_CHECKING:
    from upload_service.tus.handler import TusHandler

INTEROP_HEADER = "Upload-Draft-Interop-Version"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
# the 104's status line: the same name in every version of the draft
RESUMPTION_SUPPORTED = (104, "Upload Resumption Supported")

# An interim response's sender, as the HTTP server offers it: status, reason phrase, headers.
# It sends nothing once the final response has begun or the connection is gone.
Interim = Callable[[int, str, Sequence[tuple[str, str]]], None]


@dataclass(frozen=True, slots=True)
class Interop:
    """How one interop version of the draft differs, as this server serves it."""

    version: int
    drafts: str
    incomplete_field: bool  # interop 3: ``Upload-Incomplete`` (true: more follows)
    partial_upload_type: bool  # appends MUST say ``application/partial-upload``
    limits: bool  # ``Upload-Limit`` is defined
    lifetime_key: str | None  # the ``Upload-Limit`` key of the remaining lifetime
    problems: bool  # RFC 9457 problem types are defined

    @property
    def completeness_field(self) -> str:
        return "Upload-Incomplete" if self.incomplete_field else "Upload-Complete"


INTEROP_VERSIONS: dict[int, Interop] = {
    3: Interop(3, "-01", True, False, False, None, False),
    5: Interop(5, "-03", False, False, False, None, False),
    6: Interop(6, "-04 and -05", False, True, True, "expires", True),
    8: Interop(8, "-09 to -11", False, True, True, "max-age", True),
}
SUPPORTED = ", ".join(str(version) for version in INTEROP_VERSIONS)


class Problem(ServiceError):
    """A refusal the draft describes with an RFC 9457 problem type: its body is
    ``application/problem+json`` (``problem``)."""

    def __init__(
        self, error: ServiceError, kind: str, title: str, members: dict[str, object]
    ) -> None:
        super().__init__(error.message, status=error.status, code=error.code, headers=error.headers)
        self.problem: dict[str, object] = {"type": PROBLEM_TYPES + kind, "title": title, **members}


def interop(value: str) -> Interop:
    """The interop version a request names (400 unless this server speaks it)."""
    text = value.strip()
    found = INTEROP_VERSIONS.get(int(text)) if text.isdigit() and len(text) < 4 else None
    if found is None:
        raise BadRequest(
            f"{INTEROP_HEADER} {text[:20]!r} is not supported; this server speaks {SUPPORTED}"
        )
    return found


def completes(version: Interop, headers: TusHeaders) -> bool | None:
    """Whether this request's body ends the upload; None when the request does not say."""
    if version.incomplete_field:
        raw = headers.upload_incomplete
        return None if raw is None else not parse_boolean("Upload-Incomplete", raw)
    raw = headers.upload_complete
    return None if raw is None else parse_boolean("Upload-Complete", raw)


class Draft:
    """The draft's requests over the tus handler."""

    def __init__(
        self, handler: TusHandler, *, max_size: int | None, clock: Callable[[], datetime]
    ) -> None:
        self._handler = handler
        self._max_size = max_size
        self._clock = clock

    # -- discovery ------------------------------------------------------------------------------

    def discovery_headers(self) -> dict[str, str]:
        """What ``OPTIONS`` adds for draft clients: the limits (interop 6 and later MUST) and
        that appends take ``application/partial-upload`` (interop 8 MUST)."""
        return {
            "Upload-Limit": self._limits(None, None),
            "Accept-Patch": f"{PARTIAL_UPLOAD}, {OFFSET_CONTENT_TYPE}",
            INTEROP_HEADER: SUPPORTED,
        }

    def _limits(self, version: Interop | None, upload: Upload | None) -> str:
        members = ["min-size=0"]
        if self._max_size is not None:
            members.append(f"max-size={self._max_size}")
        if (
            version is not None
            and version.lifetime_key is not None
            and upload is not None
            and upload.state is UploadState.RECEIVING
            and upload.expires_at is not None
        ):
            left = int((upload.expires_at - self._clock()).total_seconds())
            members.append(f"{version.lifetime_key}={max(left, 0)}")
        return ", ".join(members)

    def _headers(self, version: Interop, upload: Upload) -> dict[str, str]:
        """What every draft answer about an upload says: its offset and completeness, its length
        when known, its limits where the version defines them, and the version."""
        complete = upload.state is not UploadState.RECEIVING
        headers = {INTEROP_HEADER: str(version.version), "Upload-Offset": str(upload.offset)}
        if version.incomplete_field:
            if not complete:
                headers["Upload-Incomplete"] = "?1"
        else:
            headers["Upload-Complete"] = render_boolean(complete)
        if upload.length is not None and not version.incomplete_field:
            headers["Upload-Length"] = str(upload.length)
        if version.limits:
            headers["Upload-Limit"] = self._limits(version, upload)
        return headers

    # -- creation -------------------------------------------------------------------------------

    async def create(
        self, request: TusRequest, body: AsyncIterator[bytes], *, interim: Interim | None = None
    ) -> TusResponse:
        headers = request.headers
        version = interop(headers.draft_interop_version or "")
        complete = completes(version, headers)
        if complete is None:
            if not version.incomplete_field:
                raise BadRequest("Upload-Complete is required on an upload's creation")
            complete = True  # interop 3: a creation without Upload-Incomplete ends the upload
        content_length = request_content_length(headers)
        length = _uint("Upload-Length", headers.upload_length)
        if complete and content_length is not None:
            length = _consistent(length, content_length)
        with_data = content_length != 0
        metadata = with_repr_digest(
            with_file_type(headers.upload_metadata, headers.content_type), headers
        )
        tus = replace(
            request,
            headers=TusHeaders(
                tus_resumable=TUS_VERSION,
                content_type=OFFSET_CONTENT_TYPE if with_data else None,
                content_length=headers.content_length,
                upload_length=None if length is None else str(length),
                upload_defer_length="1" if length is None else None,
                upload_metadata=metadata,
                upload_checksum=content_checksum(headers) if with_data else None,
            ),
        )

        def created(location: str) -> None:
            if interim is None:
                return
            fields = [("Location", location), (INTEROP_HEADER, str(version.version))]
            if version.limits:
                fields.append(("Upload-Limit", self._limits(None, None)))
            interim(*RESUMPTION_SUPPORTED, fields)

        ended = EndedBody(body)
        try:
            result = await self._handler.create(tus, ended, created=created)
        except TooLarge as exc:
            raise self._too_large(version, exc) from None
        upload = result.upload
        assert upload is not None
        if complete and upload.length is None and (ended.ended or not with_data):
            upload = await self._declare_end(tus, upload)
        answer = self._headers(version, upload)
        answer["Location"] = result.headers["Location"]
        return TusResponse(201, answer, upload_id=upload.id, upload=upload)

    async def _declare_end(self, request: TusRequest, upload: Upload) -> Upload:
        """A body that ended the upload without a length given: its length is the offset it
        reached (an empty append declaring it, as a tus client would send)."""
        end = replace(request, upload_id=upload.id, headers=declaring_end(upload.offset))
        result = await self._handler.patch(end, no_body())
        assert result.upload is not None
        return result.upload

    # -- offset retrieval -----------------------------------------------------------------------

    async def head(self, request: TusRequest) -> TusResponse:
        version = interop(request.headers.draft_interop_version or "")
        _refuse_upload_fields(version, request.headers, "an offset retrieval")
        result = await self._handler.head(_as_tus(request))
        upload = result.upload
        assert upload is not None
        answer = self._headers(version, upload)
        answer["Cache-Control"] = "no-store"
        return TusResponse(204, answer, upload_id=upload.id, upload=upload)

    # -- appending ------------------------------------------------------------------------------

    async def patch(self, request: TusRequest, body: AsyncIterator[bytes]) -> TusResponse:
        headers = request.headers
        version = interop(headers.draft_interop_version or "")
        media = (headers.content_type or "").split(";", 1)[0].strip().lower()
        if version.partial_upload_type and media != PARTIAL_UPLOAD:
            shown = repr(headers.content_type[:60]) if headers.content_type else "missing"
            raise UnsupportedMediaType(
                f"Content-Type must be {PARTIAL_UPLOAD} in interop version {version.version},"
                f" got {shown}"
            )
        if headers.upload_offset is None:
            raise BadRequest("Upload-Offset is required")
        offset = parse_uint("Upload-Offset", headers.upload_offset)
        complete = completes(version, headers)
        content_length = request_content_length(headers)
        length = _uint("Upload-Length", headers.upload_length)
        if complete and content_length is not None:
            length = _consistent(length, offset + content_length)
        tus = replace(
            request,
            headers=TusHeaders(
                tus_resumable=TUS_VERSION,
                content_type=OFFSET_CONTENT_TYPE,
                content_length=headers.content_length,
                upload_offset=headers.upload_offset,
                upload_length=None if length is None else str(length),
                upload_checksum=content_checksum(headers),
            ),
        )
        ended = EndedBody(body)
        try:
            result = await self._handler.patch(tus, ended)
        except OffsetMismatch as exc:
            raise self._mismatch(version, exc, offset) from None
        except TooLarge as exc:
            raise self._too_large(version, exc) from None
        upload = result.upload
        assert upload is not None
        if complete and upload.length is None and ended.ended:
            upload = await self._declare_end(tus, upload)
        return TusResponse(204, self._headers(version, upload), upload_id=upload.id, upload=upload)

    def _too_large(self, version: Interop, exc: TooLarge) -> TooLarge:
        """A 413 caused by the limits carries them (interop 8: MUST)."""
        if version.limits:
            exc.headers["Upload-Limit"] = self._limits(None, None)
        return exc

    @staticmethod
    def _mismatch(version: Interop, exc: OffsetMismatch, provided: int) -> ServiceError:
        exc.headers[INTEROP_HEADER] = str(version.version)
        if not version.problems:
            return exc
        expected = exc.headers.get("Upload-Offset")
        return Problem(
            exc,
            "mismatching-upload-offset",
            "offset from request does not match offset of resource",
            {
                "expected-offset": None if expected is None else int(expected),
                "provided-offset": provided,
            },
        )

    # -- cancellation ---------------------------------------------------------------------------

    async def delete(self, request: TusRequest) -> TusResponse:
        version = interop(request.headers.draft_interop_version or "")
        _refuse_upload_fields(version, request.headers, "a cancellation")
        result = await self._handler.delete(_as_tus(request))
        return TusResponse(204, {INTEROP_HEADER: str(version.version)}, upload_id=result.upload_id)


def _as_tus(request: TusRequest) -> TusRequest:
    return replace(request, headers=TusHeaders(tus_resumable=TUS_VERSION))


def _refuse_upload_fields(version: Interop, headers: TusHeaders, what: str) -> None:
    """Offset retrieval and cancellation carry no offset, completeness or (from -05) length."""
    sent = [
        name
        for name, value in (
            ("Upload-Offset", headers.upload_offset),
            (version.completeness_field, completes(version, headers)),
            ("Upload-Length", headers.upload_length if version.limits else None),
        )
        if value is not None
    ]
    if sent:
        raise BadRequest(f"{what} must not carry {', '.join(sent)}")


def _uint(name: str, value: str | None) -> int | None:
    return None if value is None else parse_uint(name, value)


def _consistent(declared: int | None, implied: int) -> int:
    """The length a complete request implies, which a declared ``Upload-Length`` must match."""
    if declared is not None and declared != implied:
        raise BadRequest(
            f"Upload-Length {declared} is inconsistent with the {implied} bytes"
            " that Upload-Complete: ?1 implies"
        )
    return implied
