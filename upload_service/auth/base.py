"""The ``Authenticator`` contract, the open service's, and the combinator of several kinds."""

from __future__ import annotations

from typing import Protocol

from upload_service.auth.principal import ANONYMOUS, Principal
from upload_service.errors import Unauthorized


class Authenticator(Protocol):
    """Turns a request's bearer token into the caller.

    ``authenticate`` returns the ``Principal``, or None when the token is not of this
    authenticator's kind at all (an API key handed to the JWT authenticator, a JWT to the API-key
    one), so a combinator may try the next; it raises ``Unauthorized`` (401, one-line reason) when
    the token is of its kind but does not hold (expired, bad signature, wrong audience, unknown
    signing key), and ``Unavailable`` when it cannot tell right now (a JWKS that cannot be
    fetched). It never sees a missing token: the caller answers that.
    """

    async def authenticate(self, token: str) -> Principal | None: ...

    async def aclose(self) -> None: ...


class OpenAuthenticator:
    """An open service: everyone is the anonymous caller, who reaches every upload."""

    async def authenticate(self, token: str) -> Principal | None:
        return ANONYMOUS

    async def aclose(self) -> None:
        return None


class AnyOf:
    """Accepts a token any of ``authenticators`` accepts (JWTs or API keys), asking them in turn
    until one recognises it as its kind."""

    def __init__(self, *authenticators: Authenticator) -> None:
        self._authenticators = authenticators

    async def authenticate(self, token: str) -> Principal | None:
        for authenticator in self._authenticators:
            principal = await authenticator.authenticate(token)
            if principal is not None:
                return principal
        return None

    async def aclose(self) -> None:
        for authenticator in self._authenticators:
            await authenticator.aclose()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (None when there is none);
    ``Unauthorized`` for another scheme or an empty token."""
    if authorization is None or not authorization.strip():
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized(f"unsupported authorization scheme {scheme[:20]!r}: use Bearer")
    token = token.strip()
    if not token:
        raise Unauthorized("empty bearer token")
    return token


async def authenticate(authenticator: Authenticator, authorization: str | None) -> Principal:
    """The caller of a request with this ``Authorization`` header value; 401 unless a token
    that holds (an open service asks nobody: see ``Auth.principal``)."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)", challenge=False)
    principal = await authenticator.authenticate(token)
    if principal is None:
        raise Unauthorized("invalid bearer token: not a valid JWT or a known API key")
    return principal
