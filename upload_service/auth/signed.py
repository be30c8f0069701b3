"""Signed download URLs: browsers cannot put a header on ``<video src>``, so the JSON API hands out
the download URL with ``?expires=<unix seconds>&signature=<hex HMAC-SHA256>`` over the upload id
and the expiry. A GET carrying them downloads that one upload without a token until it expires;
a wrong or expired signature is a 403, never a fallback to anonymous."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import urlencode

from upload_service.auth.principal import Principal
from upload_service.errors import Forbidden

_PURPOSE = b"upload_service download v1"


def derived_key(secret: bytes) -> bytes:
    """A signing key of its own derived from the JWT secret (never the secret itself)."""
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


class UrlSigner:
    def __init__(self, key: bytes, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._ttl = ttl
        self._clock = clock

    def _signature(self, upload_id: str, expires: int) -> str:
        message = b"\n".join((_PURPOSE, upload_id.encode(), str(expires).encode()))
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, upload_id: str) -> str:
        """``expires=...&signature=...`` for a download of ``upload_id`` from now on."""
        expires = int(self._clock()) + self._ttl
        return urlencode({"expires": expires, "signature": self._signature(upload_id, expires)})

    def verify(self, upload_id: str, expires: str | None, signature: str | None) -> Principal:
        """The bearer of a valid link: reaches ``upload_id`` only. ``Forbidden`` otherwise."""
        if not expires or not signature or not expires.isdigit() or len(expires) > 12:
            raise Forbidden("invalid download link: expires and signature are both required")
        wanted = self._signature(upload_id, int(expires))
        if not hmac.compare_digest(wanted, signature.lower()):
            raise Forbidden("invalid download link signature")
        if int(expires) < self._clock():
            raise Forbidden("download link has expired")
        return Principal(only=upload_id)
