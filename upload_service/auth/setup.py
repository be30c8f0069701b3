"""Building authentication from the settings (in the app's lifespan) and the open-mode rule: a
service without authentication runs open only on a loopback address unless ``UPLOAD_AUTH=none``
says so, and warns whenever it does."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from upload_service.auth.apikey import ApiKeyAuthenticator
from upload_service.auth.base import (
    AnyOf,
    Authenticator,
    OpenAuthenticator,
    authenticate,
    bearer_token,
)
from upload_service.auth.principal import ANONYMOUS, Principal
from upload_service.auth.signed import UrlSigner, derived_key
from upload_service.auth.tickets import TicketAuthenticator, looks_like_ticket
from upload_service.errors import Unauthorized
from upload_service.settings import ConfigError, Settings, is_loopback

if TYPE_CHECKING:
    from upload_service.auth.jwt import KeySource

logger = logging.getLogger("upload_service")


@dataclass(frozen=True, slots=True)
class Auth:
    authenticator: Authenticator
    signer: UrlSigner | None  # None: no key, download URLs go unsigned (an open service only)
    # upload tickets' bearers (set once the repository is open; an open service takes them too,
    # so that a ticket's limits hold there as well)
    tickets: TicketAuthenticator | None = None

    @property
    def open(self) -> bool:
        return isinstance(self.authenticator, OpenAuthenticator)

    async def principal(self, authorization: str | None) -> Principal:
        """The caller of a request with this ``Authorization`` value (401 unless it holds); on
        an open service, whatever else it sends, the anonymous caller. An upload ticket's bearer
        is the ticket's caller everywhere."""
        if self.tickets is not None:
            token = None
            with contextlib.suppress(Unauthorized):  # another scheme: not a ticket's bearer
                token = bearer_token(authorization)
            if token is not None and looks_like_ticket(token):
                return await self.ticket(token)
        if self.open:
            return ANONYMOUS
        return await authenticate(self.authenticator, authorization)

    async def ticket(self, token: str) -> Principal:
        """The caller holding the upload ticket ``token`` (a ``companion_endpoint``'s path
        carries it); 401 unless it is a ticket that holds."""
        if self.tickets is None or not looks_like_ticket(token):
            raise Unauthorized("invalid upload ticket")
        principal = await self.tickets.authenticate(token)
        assert principal is not None  # it looks like a ticket: it is one, or a 401
        return principal


OPEN = Auth(OpenAuthenticator(), None)


def check_open_mode(settings: Settings, host: str | None = None) -> None:
    """``ConfigError`` when the service would run open on an address others can reach."""
    bind = settings.server.host if host is None else host
    if settings.auth.enabled or settings.auth.mode == "none" or is_loopback(bind):
        return
    raise ConfigError(
        f"refusing to run without authentication on {bind!r}, which is not a loopback address: "
        "configure UPLOAD_AUTH_JWT_SECRET, UPLOAD_AUTH_JWT_PUBLIC_KEY_FILE, UPLOAD_AUTH_JWKS_URL "
        "or UPLOAD_AUTH_API_KEYS, or set UPLOAD_AUTH=none to run open on purpose"
    )


def signer(settings: Settings) -> UrlSigner | None:
    if settings.auth.signing_key is not None:
        key = settings.auth.signing_key.get_secret_value().encode()
    elif settings.auth.jwt_secret is not None:
        key = derived_key(settings.auth.jwt_secret.get_secret_value().encode())
    else:
        return None
    return UrlSigner(key, settings.auth.signed_url_ttl)


async def _jwt_authenticator(settings: Settings) -> Authenticator:
    """The JWT authenticator. Its module (PyJWT, cryptography, httpx: about 60 ms and 10 MiB) is
    imported only when JWTs are configured, in a thread (importing reads files)."""
    await anyio.to_thread.run_sync(importlib.import_module, "upload_service.auth.jwt")
    from upload_service.auth.jwt import JwtAuthenticator

    keys, algorithms = await _key_source(settings)
    return JwtAuthenticator(
        keys,
        algorithms,
        issuer=settings.auth.jwt_issuer,
        audience=settings.auth.jwt_audience,
        leeway=settings.auth.jwt_leeway,
    )


async def _key_source(settings: Settings) -> tuple[KeySource, tuple[str, ...]]:
    import httpx

    from upload_service.auth.jwt import JwksKeys, StaticKey, fits_key, public_key_algorithms

    pinned = settings.auth.jwt_algorithms
    if settings.auth.jwt_secret is not None:
        secret = settings.auth.jwt_secret.get_secret_value().encode()
        return StaticKey(secret), pinned or ("HS256",)
    if settings.auth.jwt_public_key_file is not None:
        path = settings.auth.jwt_public_key_file
        try:
            pem = await anyio.Path(path).read_bytes()
            key, implied = public_key_algorithms(pem)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"UPLOAD_AUTH_JWT_PUBLIC_KEY_FILE: {path}: {exc}") from None
        if pinned and not fits_key(key, pinned):
            raise ConfigError(
                f"UPLOAD_AUTH_JWT_ALGORITHMS: {', '.join(pinned)} does not fit the key in {path}"
            )
        return StaticKey(key), pinned or implied
    assert settings.auth.jwks_url is not None
    algorithms = pinned or ("RS256", "ES256")
    client = httpx.AsyncClient(follow_redirects=False)
    keys = JwksKeys(
        settings.auth.jwks_url,
        client,
        algorithms,
        refetch_interval=settings.auth.jwks_refetch_interval,
    )
    return keys, algorithms


@asynccontextmanager
async def open_auth(settings: Settings) -> AsyncIterator[Auth]:
    """The authenticator and URL signer the settings ask for, closed after."""
    check_open_mode(settings)
    kinds: list[Authenticator] = []
    if settings.auth.jwt_enabled:
        kinds.append(await _jwt_authenticator(settings))
    if settings.auth.api_keys_enabled:
        kinds.append(ApiKeyAuthenticator(settings.auth.api_keys))
    if not kinds:
        logger.warning(
            "authentication is off: anyone who can reach %s:%d may upload, download and delete "
            "every upload (configure UPLOAD_AUTH_* for anything but local use)",
            settings.server.host,
            settings.server.port,
        )
        yield Auth(OpenAuthenticator(), signer(settings))
        return
    authenticator: Authenticator = kinds[0] if len(kinds) == 1 else AnyOf(*kinds)
    try:
        yield Auth(authenticator, signer(settings))
    finally:
        await authenticator.aclose()
