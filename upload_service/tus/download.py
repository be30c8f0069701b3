"""``GET /files/{id}`` of a finished upload: what to send, decided without touching the bytes.

Pure functions over an ``Upload`` and raw request header values; the route streams the chosen span.

User content must never run as a page of the service's origin: every download carries
``X-Content-Type-Options: nosniff`` and a sandboxing ``Content-Security-Policy``; types a browser
would render as a document (HTML, XML, SVG, scripts) are served as ``application/octet-stream``;
and only audio, video and raster images are ``inline`` (so ``<video src>`` plays), everything else
an ``attachment``. A finished upload never changes, so its validators are strong.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import quote

from upload_service.errors import RangeNotSatisfiable
from upload_service.tus.conditional import (
    Conditions,
    EntityTag,
    Validators,
    not_modified,
    range_allowed,
)
from upload_service.tus.protocol import http_date, parse_range
from upload_service.uploads import Upload

OCTET_STREAM = "application/octet-stream"
# RFC 6838 restricted-name, ASCII only; parameters are not accepted (the type falls back)
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
# Types a browser renders as a document that can run script or load content. Any ``+xml`` type
# is parsed as XML, which may carry XHTML or SVG; ``multipart/*`` covers x-mixed-replace.
_ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "text/javascript",
        "text/x-javascript",
        "text/ecmascript",
        "text/jscript",
        "text/xml",
        "application/xml",
        "text/xsl",
        "text/xml-external-parsed-entity",
        "application/xml-dtd",
        "application/x-shockwave-flash",
    }
)
_INLINE_PREFIXES = ("video/", "audio/", "image/")
_UNSAFE_FILENAME = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|;%]')
# Inline media keep a bare ``sandbox``: ``default-src 'none'`` would stop a browser's own media
# document (a URL opened directly) from loading the video it shows.
_CSP_ATTACHMENT = "default-src 'none'; sandbox"
_CSP_INLINE = "sandbox"
_CACHE_CONTROL = "private, no-transform"


@dataclass(frozen=True, slots=True)
class DownloadHeaders:
    """Raw values of the request headers a download reads (None when absent)."""

    range: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_range: str | None = None


@dataclass(frozen=True, slots=True)
class Download:
    status: int  # 200, 206 or 304
    headers: dict[str, str] = field(default_factory=dict)
    span: tuple[int, int] | None = None  # bytes [start, end) to stream; None: no body (304)


def prepare(upload: Upload, request: DownloadHeaders) -> Download:
    """The response to a GET of the finished ``upload``: 304, 206 or 200, in RFC 9110 order
    (If-None-Match, else If-Modified-Since; then If-Range decides whether Range applies).

    Raises ``RangeNotSatisfiable`` for a range that applies and lies outside the file."""
    size = upload.length or 0
    validators = validators_of(upload)
    conditions = Conditions(request.if_none_match, request.if_modified_since, request.if_range)
    headers = {
        "ETag": str(validators.etag),
        "Cache-Control": _CACHE_CONTROL,
    }
    if validators.last_modified is not None:
        headers["Last-Modified"] = http_date(validators.last_modified)
    if not_modified(validators, conditions):
        return Download(304, headers)
    media_type = content_type(upload)
    inline = media_type.startswith(_INLINE_PREFIXES)
    headers |= {
        "Content-Type": media_type,
        "Content-Disposition": content_disposition(upload, inline=inline),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _CSP_INLINE if inline else _CSP_ATTACHMENT,
        "Accept-Ranges": "bytes",
    }
    if upload.sha256 is not None:
        encoded = base64.b64encode(bytes.fromhex(upload.sha256)).decode("ascii")
        headers["Repr-Digest"] = f"sha-256=:{encoded}:"  # RFC 9530
        headers["Digest"] = f"sha-256={encoded}"  # RFC 3230, for older clients
    wanted = None
    if request.range is not None and range_allowed(validators, conditions):
        try:
            wanted = parse_range(request.range, size)
        except ValueError:
            raise RangeNotSatisfiable(
                f"Range {request.range[:60]!r} lies outside the {size} bytes",
                headers={"Content-Range": f"bytes */{size}"},
            ) from None
    if wanted is None:
        headers["Content-Length"] = str(size)
        return Download(200, headers, (0, size))
    headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{size}"
    headers["Content-Length"] = str(wanted.length)
    return Download(206, headers, (wanted.start, wanted.end + 1))


def validators_of(upload: Upload) -> Validators:
    """A strong ETag from the verified sha256 (else from id, length and completion time) and
    Last-Modified from the completion time, in the whole seconds an HTTP-date can carry."""
    if upload.sha256 is not None:
        etag = EntityTag(f"sha256-{upload.sha256}")
    else:
        completed = upload.completed_at.isoformat() if upload.completed_at else ""
        identity = f"{upload.id}\0{upload.length}\0{completed}".encode()
        etag = EntityTag(f"id-{hashlib.sha256(identity).hexdigest()[:32]}")
    modified = upload.completed_at
    return Validators(etag, modified.replace(microsecond=0) if modified else None)


def content_type(upload: Upload) -> str:
    """The first valid media type in the ``filetype`` metadata (or a common alias), unless it is
    one a browser would render as a document: that, like no type at all, is an octet-stream."""
    for key in ("filetype", "contentType", "type", "mimeType"):
        raw = upload.metadata.get(key)
        if raw:
            value = raw.decode("utf-8", errors="replace").strip().lower()
            if _MEDIA_TYPE.fullmatch(value):
                return OCTET_STREAM if _active(value) else value
    return OCTET_STREAM


def _active(media_type: str) -> bool:
    return (
        media_type in _ACTIVE_TYPES
        or media_type.endswith("+xml")
        or media_type.startswith("multipart/")
    )


def content_disposition(upload: Upload, *, inline: bool = False) -> str:
    """``attachment`` (or ``inline``) with a quoted ASCII fallback and an RFC 6266 / RFC 5987
    ``filename*`` for the real name; path parts, quotes and control characters never get through."""
    raw = upload.metadata.get("filename") or upload.metadata.get("name") or b""
    name = raw.decode("utf-8", errors="replace")
    name = re.split(r"[/\\]", name)[-1].strip().strip(".") or upload.id
    name = _UNSAFE_FILENAME.sub("_", unicodedata.normalize("NFC", name))[:200]
    ascii_name = name.encode("ascii", errors="replace").decode("ascii").replace("?", "_")
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
