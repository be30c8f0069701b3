"""``Upload-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256, keyed by ``UPLOAD_HOOK_SECRET``,
over ``<t>.`` followed by the exact request body. A receiver recomputes it over the bytes it got,
compares in constant time and refuses a timestamp too far from its own clock (replays)."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "Upload-Signature"
DEFAULT_TOLERANCE = 300.0  # seconds a receiver accepts between the signature's time and its own


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Upload-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, made within ``tolerance`` of ``now``."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(fields.get("v1", ""), signature(secret, timestamp, body))
