"""``upload-service token``: a development JWT signed with the configured shared secret, carrying
what the service checks (``sub``, ``exp``, and ``iss`` / ``aud`` when the settings ask for them)."""

from __future__ import annotations

import time

import jwt

from upload_service.auth.jwt import MAX_CLAIM
from upload_service.settings import ConfigError, Settings


def dev_token(settings: Settings, subject: str, ttl: int, now: float | None = None) -> str:
    """A token for ``subject`` valid for ``ttl`` seconds, signed with ``UPLOAD_AUTH_JWT_SECRET``
    in the first algorithm the service accepts (HS256 unless ``UPLOAD_AUTH_JWT_ALGORITHMS`` pins
    another). ``ConfigError`` when the service could not verify it: no secret (a public key or a
    JWKS verifies, but cannot sign), or JWTs turned off by ``UPLOAD_AUTH``."""
    if settings.auth.jwt_secret is None:
        raise ConfigError(
            "no UPLOAD_AUTH_JWT_SECRET is configured: only a shared secret can sign a token here "
            "(with UPLOAD_AUTH_JWT_PUBLIC_KEY_FILE or UPLOAD_AUTH_JWKS_URL, tokens come from "
            "their issuer)"
        )
    if not settings.auth.jwt_enabled:
        raise ConfigError(f"UPLOAD_AUTH={settings.auth.mode}: this service does not take JWTs")
    if not subject or len(subject) > MAX_CLAIM:
        raise ConfigError(f"--sub must be 1 to {MAX_CLAIM} characters")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": subject, "iat": issued, "exp": issued + ttl}
    if settings.auth.jwt_issuer is not None:
        claims["iss"] = settings.auth.jwt_issuer
    if settings.auth.jwt_audience is not None:
        claims["aud"] = settings.auth.jwt_audience
    algorithm = (settings.auth.jwt_algorithms or ("HS256",))[0]
    secret = settings.auth.jwt_secret.get_secret_value().encode()
    return jwt.encode(claims, secret, algorithm)
