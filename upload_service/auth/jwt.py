"""Bearer JWTs (PyJWT): verified against a configured key, with the algorithms pinned by the
configuration (never taken from the token: ``alg: none`` and an HS256 token signed with a public
key as its secret fail before any key is looked at), ``exp`` and ``sub`` required, ``iss`` and
``aud`` checked when configured.

Keys come from a ``KeySource``: one static key (an HS256 secret, a PEM public key file), or a JWKS
fetched with ``httpx.AsyncClient`` (never blocking the loop), cached, and fetched again when a
token names a ``kid`` the cache lacks, at most once per ``refetch_interval`` (so tokens with made-up
kids cannot make it fetch on every request) and once for all requests waiting on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from upload_service.auth.owners import MAX_OWNER, jwt_owner
from upload_service.auth.principal import Principal
from upload_service.errors import Unauthorized, Unavailable
from upload_service.tus.content_types import parse_allowed_types

logger = logging.getLogger("upload_service.auth")

Key = Any  # what PyJWT verifies with: bytes (HMAC), a cryptography public key, or a PyJWK
MAX_CLAIM = 255  # the longest sub and iss taken
JWKS_MAX_AGE = 600.0  # seconds a fetched JWKS is used before it is fetched again (revocations)
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class KeySource(Protocol):
    async def key(self, kid: str | None) -> Key:
        """The key that verifies tokens naming ``kid``; ``Unauthorized`` when there is none."""
        ...

    async def aclose(self) -> None: ...


class StaticKey:
    def __init__(self, key: Key) -> None:
        self._key = key

    async def key(self, kid: str | None) -> Key:
        return self._key

    async def aclose(self) -> None:
        return None


def public_key_algorithms(pem: bytes) -> tuple[Key, tuple[str, ...]]:
    """A PEM public key and the algorithm its type implies (RS256, ES256/384/512)."""
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ("RS256",)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        return key, (_CURVES[key.curve.name],)
    raise ValueError("must be an RSA or an EC (P-256, P-384, P-521) public key")


def fits_key(key: Key, algorithms: tuple[str, ...]) -> bool:
    if isinstance(key, rsa.RSAPublicKey):
        return all(name[:2] in ("RS", "PS") for name in algorithms)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return algorithms == (_CURVES.get(key.curve.name),)
    return all(name.startswith("HS") for name in algorithms)


class JwksKeys:
    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        algorithms: tuple[str, ...],
        *,
        refetch_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._client = client
        self._algorithms = algorithms
        self._refetch_interval = refetch_interval
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._lock = anyio.Lock()
        self.fetches = 0  # attempts made (observability, tests)

    async def key(self, kid: str | None) -> Key:
        if self._fetched_at is None or self._clock() - self._fetched_at > JWKS_MAX_AGE:
            await self._refresh(stale_ok=self._fetched_at is not None)
        found = self._lookup(kid)
        if found is None and self._may_try():
            await self._refresh(stale_ok=True)
            found = self._lookup(kid)
        if found is None:
            raise Unauthorized(
                "unknown signing key" + ("" if kid is None else f" (kid {kid[:64]!r})")
            )
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if kid is not None else None

    def _may_try(self) -> bool:
        return self._tried_at is None or self._clock() - self._tried_at >= self._refetch_interval

    async def _refresh(self, *, stale_ok: bool) -> None:
        attempt = self._tried_at
        async with self._lock:
            if self._tried_at != attempt:  # another request fetched while this one waited
                return
            self._tried_at = self._clock()
            self.fetches += 1
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                reason = f"cannot fetch the JWKS from {self._url}: {exc}"[:300]
                if stale_ok:
                    logger.warning("%s; keeping the keys fetched before", reason)
                    return
                raise Unavailable(reason, headers={"Retry-After": "5"}) from None
            self._keys = keys
            self._fetched_at = self._tried_at

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        response = await self._client.get(self._url, timeout=10.0)
        response.raise_for_status()
        document = response.json()
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("the document has no keys list")
        keys: dict[str | None, jwt.PyJWK] = {}
        for data in entries:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                found = jwt.PyJWK(data)
            except jwt.PyJWTError:
                continue  # a key type or curve this service does not verify with
            if found.algorithm_name in self._algorithms:  # never an HS key from a JWKS
                kid = data.get("kid")
                keys[kid if isinstance(kid, str) else None] = found
        return keys

    async def aclose(self) -> None:
        await self._client.aclose()


class JwtAuthenticator:
    def __init__(
        self,
        keys: KeySource,
        algorithms: tuple[str, ...],
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        self._keys = keys
        self._algorithms = algorithms
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    async def authenticate(self, token: str) -> Principal | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None  # not a JWT: perhaps an API key
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise Unauthorized(
                f"token algorithm {str(alg)[:20]!r} is not accepted "
                f"(accepted: {', '.join(self._algorithms)})"
            )
        kid = header.get("kid")
        key = await self._keys.key(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_reason(exc)) from None
        return principal_of(claims)

    async def aclose(self) -> None:
        await self._keys.aclose()


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token has expired"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad token signature"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token is for another audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token is from another issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token has no {exc.claim} claim"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token is not valid yet"
    if isinstance(exc, jwt.InvalidAlgorithmError | jwt.InvalidKeyError):
        return "token algorithm does not fit the signing key"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return f"invalid token: {exc}"[:200]


def principal_of(claims: Mapping[str, Any]) -> Principal:
    """The caller a verified token names: its owner is ``jwt:ISS:SUB`` (``owners.jwt_owner``);
    ``upload_max_size`` (bytes) and ``upload_types`` (media-type patterns, a list or a
    comma-separated string) cap its uploads."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_CLAIM:
        raise Unauthorized(f"token sub must be a string of 1 to {MAX_CLAIM} characters")
    issuer = claims.get("iss")
    if issuer is not None and (not isinstance(issuer, str) or len(issuer) > MAX_CLAIM):
        raise Unauthorized(f"token iss must be a string of at most {MAX_CLAIM} characters")
    owner = jwt_owner(issuer, subject)
    if len(owner) > MAX_OWNER:  # an issuer of many colons, escaped
        raise Unauthorized(f"token iss and sub make an owner of over {MAX_OWNER} characters")
    max_size = claims.get("upload_max_size")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0
    ):
        raise Unauthorized("token claim upload_max_size must be a positive whole number of bytes")
    types = claims.get("upload_types")
    allowed: tuple[str, ...] = ()
    if types is not None:
        if isinstance(types, list) and all(isinstance(item, str) for item in types):
            text = ",".join(types)
        elif isinstance(types, str):
            text = types
        else:
            raise Unauthorized("token claim upload_types must be a list of media types")
        try:
            allowed = parse_allowed_types(text)
        except ValueError as exc:
            raise Unauthorized(f"token claim upload_types {exc}") from None
        if not allowed:
            raise Unauthorized("token claim upload_types allows no type")
    return Principal(owner=owner, max_size=max_size, allowed_types=allowed)
