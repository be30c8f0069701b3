"""Who may upload (docs/authentication.md): JWTs, API keys, or open on loopback, and the key
of signed download URLs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from upload_service.settings._base import Group, empty_is_unset, is_loopback, prefixed, shown

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
JWT_ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)


class AuthSettings(Group):
    model_config = ConfigDict(alias_generator=prefixed("auth_"))

    mode: Literal["auto", "jwt", "api-key", "none"] = Field(
        default="auto",
        alias="auth",
        description="`auto` (JWTs if a JWT key is configured, API keys if any are, either if "
        "both; open when neither, which start-up allows only on a loopback `UPLOAD_HOST`), "
        "`jwt` or `api-key` (only that kind, its setting required), `none` (open on any "
        "address); see [authentication](authentication.md)",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret (32 bytes or more)"
    )
    jwt_public_key_file: Path | None = Field(
        default=None,
        description="PEM public key of the token issuer (RSA: RS256, EC: ES256/384/512)",
    )
    jwks_url: str | None = Field(
        default=None,
        description="the issuer's JWKS (`https://`, or `http://` on loopback), re-fetched on an "
        "unknown `kid`",
    )
    jwt_algorithms: tuple[str, ...] = Field(
        default=(),
        description="comma-separated algorithms accepted (never the token's choice); empty: "
        "derived from the key (`RS256,ES256` for a JWKS)",
        json_schema_extra=shown("from the key"),
    )
    jwt_issuer: str | None = Field(
        default=None, description="`iss` a token must carry (unset: not checked)"
    )
    jwt_audience: str | None = Field(
        default=None,
        description="`aud` a token must carry (unset: a token carrying `aud` is refused)",
    )
    jwt_leeway: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="seconds of clock skew allowed on `exp`/`nbf` (at most 300)",
    )
    jwks_refetch_interval: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="fewest seconds between JWKS fetches for tokens naming a `kid` it does not "
        "have",
    )
    api_keys: tuple[tuple[str, str], ...] = Field(
        default=(),
        description="comma-separated `owner:sha256hex` (`upload-service hash-key` prints one)",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of signed download URLs (32 bytes or more; required with auth on "
        "and no JWT secret); every replica needs the same",
        json_schema_extra=shown("derived from the JWT secret"),
    )
    signed_url_ttl: int = Field(
        default=3600,
        ge=10,
        le=7 * 24 * 3600,
        alias="signed_url_ttl",
        description="seconds a signed download URL the JSON API hands out stays valid",
    )

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in JWT_ALGORITHMS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not one of {', '.join(JWT_ALGORITHMS)}")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        entries: list[tuple[str, str]] = []
        for raw in filter(None, (part.strip() for part in value.split(","))):
            owner, colon, digest = raw.rpartition(":")
            if not colon or not owner or not _SHA256_HEX.fullmatch(digest.lower()):
                raise ValueError(
                    "entries are owner:sha256hex (the SHA-256 of the key in 64 hex digits, "
                    "never the key; upload-service hash-key prints one)"
                )
            entries.append((owner, digest.lower()))
        if len({digest for _, digest in entries}) != len(entries):
            raise ValueError("the same key is listed twice")
        return tuple(entries)

    @field_validator("jwt_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (an HS256 key of 256 bits)")
        return value

    @field_validator("signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    _empty_is_unset = field_validator(
        "jwks_url",
        "jwt_issuer",
        "jwt_audience",
        "jwt_secret",
        "jwt_public_key_file",
        "signing_key",
        mode="before",
    )(empty_is_unset)

    @field_validator("jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and is_loopback(parts.hostname or ""):
            return value
        raise ValueError("must be an https:// URL (http:// only on a loopback address)")

    @model_validator(mode="after")
    def _check_auth(self) -> AuthSettings:
        sources = [
            name
            for name, value in (
                ("UPLOAD_AUTH_JWT_SECRET", self.jwt_secret),
                ("UPLOAD_AUTH_JWT_PUBLIC_KEY_FILE", self.jwt_public_key_file),
                ("UPLOAD_AUTH_JWKS_URL", self.jwks_url),
            )
            if value is not None
        ]
        if len(sources) > 1:
            raise ValueError(f"set one JWT key source, not {' and '.join(sources)}")
        if self.mode == "none" and (sources or self.api_keys):
            configured = " and ".join([*sources, *(["UPLOAD_AUTH_API_KEYS"] * bool(self.api_keys))])
            raise ValueError(f"UPLOAD_AUTH=none runs open, but {configured} is set")
        if self.mode == "jwt" and not sources:
            raise ValueError(
                "UPLOAD_AUTH=jwt needs UPLOAD_AUTH_JWT_SECRET, UPLOAD_AUTH_JWT_PUBLIC_KEY_FILE "
                "or UPLOAD_AUTH_JWKS_URL"
            )
        if self.mode == "api-key" and not self.api_keys:
            raise ValueError("UPLOAD_AUTH=api-key needs UPLOAD_AUTH_API_KEYS")
        if self.jwt_algorithms and sources:
            symmetric = self.jwt_secret is not None
            wrong = [name for name in self.jwt_algorithms if name.startswith("HS") != symmetric]
            if wrong:
                kind = "a secret takes HS*" if symmetric else "public keys take RS*, PS*, ES*"
                raise ValueError(f"UPLOAD_AUTH_JWT_ALGORITHMS: {wrong[0]} does not fit: {kind}")
        if self.enabled and self.signing_key is None and self.jwt_secret is None:
            raise ValueError(
                "authentication is on: set UPLOAD_AUTH_SIGNING_KEY (32 bytes or more, the same "
                "on every replica) for signed download URLs"
            )
        return self

    @property
    def jwt_enabled(self) -> bool:
        configured = (self.jwt_secret, self.jwt_public_key_file, self.jwks_url)
        return self.mode in ("auto", "jwt") and any(value is not None for value in configured)

    @property
    def api_keys_enabled(self) -> bool:
        return self.mode in ("auto", "api-key") and bool(self.api_keys)

    @property
    def enabled(self) -> bool:
        """Whether requests must authenticate (else the service runs open)."""
        return self.jwt_enabled or self.api_keys_enabled
