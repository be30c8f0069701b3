"""tus 1.0.0 wire facts: header names, the metadata codec, header parsing and the date format.

Pure functions over strings; nothing here knows about HTTP frameworks, disks or databases.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from upload_service.errors import BadRequest, PreconditionFailed, UnsupportedMediaType
from upload_service.tus.endpoint import Endpoint
from upload_service.uploads import Metadata, Upload, UploadState

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# the methods of the upload collection (``<base>/``) and of one upload (``<base>/<id>``), and
# both as route templates below the base path
COLLECTION_METHODS = ("OPTIONS", "POST")
UPLOAD_METHODS = ("OPTIONS", "HEAD", "PATCH", "DELETE", "GET")
TUS_ROUTES = (("/", COLLECTION_METHODS), ("/{upload_id}", UPLOAD_METHODS))

# Headers a browser client sends and must be allowed to read (CORS).
REQUEST_HEADERS = (
    "Authorization",
    "Content-Digest",
    "Content-Type",
    "Origin",
    "Tus-Resumable",
    "Upload-Checksum",
    "Repr-Digest",
    "Upload-Complete",
    "Upload-Concat",
    "Upload-Defer-Length",
    "Upload-Draft-Interop-Version",
    "Upload-Incomplete",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Want-Repr-Digest",
    "X-HTTP-Method-Override",
    "X-Requested-With",
)
RESPONSE_HEADERS = (
    "Location",
    "Tus-Checksum-Algorithm",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Resumable",
    "Tus-Version",
    "Upload-Complete",
    "Upload-Concat",
    "Upload-Defer-Length",
    "Upload-Draft-Interop-Version",
    "Upload-Expires",
    "Upload-Incomplete",
    "Upload-Limit",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Content-Disposition",
    "Content-Range",
    "Accept-Patch",
    "Accept-Ranges",
    "Repr-Digest",
    "Digest",
    "ETag",
    "WWW-Authenticate",
)

_UINT = re.compile(r"[0-9]{1,19}")
_METADATA_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_MAX_INT = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")


def check_version(value: str | None) -> None:
    """Raise 412 unless the client speaks the one version we serve."""
    if value != TUS_VERSION:
        shown = "missing" if value is None else repr(value[:40])
        raise PreconditionFailed(
            f"Tus-Resumable is {shown}; this server supports {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


def parse_uint(name: str, value: str) -> int:
    value = value.strip()
    if not _UINT.fullmatch(value) or int(value) > _MAX_INT:
        raise BadRequest(f"{name} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


def check_offset_content_type(value: str | None) -> None:
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != OFFSET_CONTENT_TYPE:
        shown = "missing" if not value else repr(value[:60])
        raise UnsupportedMediaType(f"Content-Type must be {OFFSET_CONTENT_TYPE}, got {shown}")


def single_header(name: str, values: Sequence[str]) -> str | None:
    """The one value of a request header sent once, or repeated with the same value; a header
    repeated with different values is a 400 naming it (which one counts would be a guess)."""
    if not values:
        return None
    first = values[0]
    if any(value != first for value in values[1:]):
        raise BadRequest(f"{name} is sent {len(values)} times with different values")
    return first


def decode_metadata(
    header: str, *, max_bytes: int | None = None, max_keys: int | None = None
) -> Metadata:
    """Decode ``Upload-Metadata`` strictly: unique keys, no spaces or commas, valid base64 values;
    at most ``max_bytes`` of raw header value (checked before any decoding) and ``max_keys`` keys.
    """
    result: Metadata = {}
    # Header values arrive as latin-1 text: one character per byte on the wire.
    if max_bytes is not None and len(header) > max_bytes:
        raise BadRequest(
            f"Upload-Metadata is {len(header)} bytes, more than the {max_bytes} allowed"
        )
    if not header.strip():
        return result
    pairs = header.split(",")
    if max_keys is not None and len(pairs) > max_keys:
        raise BadRequest(f"Upload-Metadata has {len(pairs)} keys, more than the {max_keys} allowed")
    for raw_pair in pairs:
        pair = raw_pair.strip()
        parts = pair.split(" ")
        if not pair or len(parts) > 2:
            raise BadRequest(f"Upload-Metadata pair {pair[:60]!r} is not 'key base64value'")
        key = parts[0]
        if not _METADATA_KEY.fullmatch(key):
            raise BadRequest(f"Upload-Metadata key {key[:60]!r} is not a valid token")
        if key in result:
            raise BadRequest(f"Upload-Metadata key {key!r} appears twice")
        if len(parts) == 1:
            result[key] = None
            continue
        encoded = parts[1]
        if not _BASE64.fullmatch(encoded) or len(encoded) % 4:
            raise BadRequest(f"Upload-Metadata value of {key!r} is not valid base64")
        try:
            result[key] = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise BadRequest(f"Upload-Metadata value of {key!r} is not valid base64") from exc
    return result


def encode_metadata(metadata: Metadata) -> str:
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value).decode('ascii')}"
        for key, value in metadata.items()
    )


def metadata_text(metadata: Metadata) -> dict[str, str | None]:
    """Metadata for humans and JSON: values as UTF-8 text (undecodable bytes replaced)."""
    return {
        key: None if value is None else value.decode("utf-8", errors="replace")
        for key, value in metadata.items()
    }


def http_date(moment: datetime) -> str:
    """RFC 9110 IMF-fixdate, e.g. ``Wed, 25 Jun 2025 16:00:00 GMT``."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Parse a single ``bytes=`` range. None means "send the whole file" (absent or ignorable).

    Raises ``ValueError`` for a syntactically valid range that cannot be satisfied.
    """
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multi-range requests: RFC 9110 lets us ignore Range
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    # ASCII digits only: str.isdigit() also accepts "²", which int() then rejects.
    if (first and not _DIGITS.fullmatch(first)) or (last and not _DIGITS.fullmatch(last)):
        return None
    if not (first or last):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise ValueError("empty suffix range")
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignored, like the syntax errors above
    if start >= size:
        raise ValueError("range starts past the end")
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


@dataclass(frozen=True, slots=True)
class Concat:
    """A parsed ``Upload-Concat`` header: ``partial``, or ``final`` with its parts' URLs."""

    final: bool
    urls: tuple[str, ...] = ()


def parse_concat(value: str | None) -> Concat | None:
    if value is None:
        return None
    text = value.strip()
    if text == "partial":
        return Concat(final=False)
    kind, separator, rest = text.partition(";")
    if kind.strip() != "final" or not separator:
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    urls = tuple(rest.split())
    if not urls:
        raise BadRequest("Upload-Concat: final lists no partial uploads")
    return Concat(final=True, urls=urls)


def offset_headers(upload: Upload) -> dict[str, str]:
    headers = {"Upload-Offset": str(upload.offset)}
    if upload.expires_at is not None and upload.state is UploadState.RECEIVING:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return headers


def status_headers(upload: Upload, endpoint: Endpoint) -> dict[str, str]:
    """The headers of a HEAD: the offset, the length (or that it is deferred), the metadata and
    how the upload takes part in a concatenation (a final's parts as URLs under ``endpoint``)."""
    headers = offset_headers(upload)
    headers["Cache-Control"] = "no-store"
    if upload.is_final:
        headers["Upload-Concat"] = "final;" + " ".join(
            endpoint.url(part, relative=True) for part in upload.parts
        )
        if upload.state is UploadState.RECEIVING:
            del headers["Upload-Offset"]  # not assembled yet: there is no offset to resume
    elif upload.is_partial:
        headers["Upload-Concat"] = "partial"
    if upload.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.length)
    if upload.metadata:
        headers["Upload-Metadata"] = encode_metadata(upload.metadata)
    return headers
