"""The IETF draft's field values as this server reads them (``tus/draft.py``): Structured Field
Booleans, RFC 9530 digest fields, and the tus metadata a creation's ``Repr-Digest`` and own
``Content-Type`` add to. Pure functions over strings; a malformed value is a 400 naming it."""

from __future__ import annotations

import base64
import binascii
import re

from upload_service.errors import BadRequest
from upload_service.tus.protocol import OFFSET_CONTENT_TYPE
from upload_service.tus.request import TusHeaders

PARTIAL_UPLOAD = "application/partial-upload"


def parse_boolean(name: str, value: str) -> bool:
    """A Structured Field Boolean (RFC 8941: ``?1`` or ``?0``, parameters ignored)."""
    item = value.split(";", 1)[0].strip()
    if item == "?1":
        return True
    if item == "?0":
        return False
    raise BadRequest(f"{name} must be ?1 or ?0, got {value[:20]!r}")


def render_boolean(value: bool) -> str:
    return "?1" if value else "?0"


_DICTIONARY_MEMBER = re.compile(r"\s*([a-z*][a-z0-9_\-.*]*)\s*=\s*:([A-Za-z0-9+/=]*):\s*(?:;.*)?")


def parse_digests(name: str, value: str) -> dict[str, bytes]:
    """An RFC 9530 digest field: a Dictionary of algorithm = byte sequence (400 if malformed)."""
    digests: dict[str, bytes] = {}
    for member in value.split(","):
        match = _DICTIONARY_MEMBER.fullmatch(member)
        if match is None:
            raise BadRequest(f"{name} must be a list of algorithm=:base64:, got {member[:40]!r}")
        try:
            digests[match[1]] = base64.b64decode(match[2], validate=True)
        except binascii.Error:
            raise BadRequest(f"{name} {match[1]} is not valid base64") from None
    return digests


# RFC 9530 algorithm names and the tus checksum algorithms they are
_CONTENT_DIGESTS = {"sha-256": "sha256", "sha-512": "sha512"}


def content_checksum(headers: TusHeaders) -> str | None:
    """``Content-Digest`` as the tus ``Upload-Checksum`` of this request's body (the strongest
    algorithm both know; None if they share none, which RFC 9530 lets a recipient ignore)."""
    if headers.content_digest is None:
        return None
    digests = parse_digests("Content-Digest", headers.content_digest)
    for name in ("sha-512", "sha-256"):
        if name in digests:
            return f"{_CONTENT_DIGESTS[name]} {base64.b64encode(digests[name]).decode()}"
    return None


def with_repr_digest(metadata: str | None, headers: TusHeaders) -> str | None:
    """The creation's tus metadata, with ``Repr-Digest``'s sha-256 as its ``sha256`` (the
    file's expected digest, checked when it is verified)."""
    if headers.repr_digest is None:
        return metadata
    digest = parse_digests("Repr-Digest", headers.repr_digest).get("sha-256")
    if digest is None:
        return metadata
    if len(digest) != 32:
        raise BadRequest(f"Repr-Digest sha-256 has {len(digest)} bytes, not 32")
    if "sha256" in metadata_keys(metadata):
        raise BadRequest("send the file's sha256 as Repr-Digest or as metadata, not both")
    text = base64.b64encode(base64.b64encode(digest)).decode()
    return f"{metadata},sha256 {text}" if metadata else f"sha256 {text}"


def metadata_keys(metadata: str | None) -> set[str]:
    if not metadata or not metadata.strip():
        return set()
    return {pair.strip().split(" ", 1)[0] for pair in metadata.split(",")}


def with_file_type(metadata: str | None, content_type: str | None) -> str | None:
    """A creation body's own ``Content-Type`` (the file's type) as ``filetype`` metadata, unless
    the metadata names one."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not media or media in (PARTIAL_UPLOAD, OFFSET_CONTENT_TYPE):
        return metadata
    if "filetype" in metadata_keys(metadata):
        return metadata
    encoded = base64.b64encode(media.encode("latin-1", errors="replace")).decode()
    return f"{metadata},filetype {encoded}" if metadata else f"filetype {encoded}"
