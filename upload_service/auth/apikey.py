"""Static API keys for service-to-service use: ``UPLOAD_AUTH_API_KEYS`` holds ``owner:sha256hex``
entries, the SHA-256 of each key and never the key, so the configuration leaks no credential. A
presented key is hashed and compared with every entry in constant time. The uploads a key creates
belong to ``key:OWNER`` (``owners.key_owner``), a namespace no JWT reaches."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from upload_service.auth.owners import key_owner
from upload_service.auth.principal import Principal


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``, as an entry stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def entry(owner: str, key: str) -> str:
    """The ``UPLOAD_AUTH_API_KEYS`` entry for ``key`` of ``owner``."""
    return f"{owner}:{hash_key(key)}"


class ApiKeyAuthenticator:
    def __init__(self, entries: tuple[tuple[str, str], ...]) -> None:
        self._entries = tuple((owner, bytes.fromhex(digest)) for owner, digest in entries)

    async def authenticate(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for owner, digest in self._entries:  # every entry, found or not: constant time
            if hmac.compare_digest(presented, digest):
                found = owner
        return None if found is None else Principal(owner=key_owner(found))

    async def aclose(self) -> None:
        return None
