"""The owner string stored on an upload: which kind of credential made it, and whose it is.

Each kind of credential has its own namespace, so no credential of one kind can name an owner of
another (a JWT whose ``sub`` is an API key's owner name reaches none of that key's uploads):

- an API key of ``UPLOAD_AUTH_API_KEYS`` entry ``NAME:sha256hex``: ``key:NAME``;
- a JWT: ``jwt:ISS:SUB``, its verified ``iss`` claim (empty when the token has none) with ``%``
  and ``:`` percent-encoded (an issuer is usually a URL), then its ``sub`` as it is. The first
  ``:`` after ``jwt:`` ends the issuer, so two different (issuer, subject) pairs never meet.

Hooks (pre-create's ``owner``, the events' payloads), the JSON API, quotas and the logs all see
this one string.
"""

from __future__ import annotations

KEY_PREFIX = "key:"
JWT_PREFIX = "jwt:"
MAX_OWNER = 1024  # the uploads.owner column


def key_owner(name: str) -> str:
    """The owner of the uploads an API key of ``name`` creates."""
    return KEY_PREFIX + name


def jwt_owner(issuer: str | None, subject: str) -> str:
    """The owner of the uploads a JWT of ``issuer`` (its ``iss``) and ``subject`` creates."""
    escaped = (issuer or "").replace("%", "%25").replace(":", "%3A")
    return f"{JWT_PREFIX}{escaped}:{subject}"
