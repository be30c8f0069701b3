"""Interim (1xx) responses, which ASGI cannot send: the HTTP protocol class (``ops.serving``)
offers a sender in each HTTP request's scope, as ``scope["extensions"][INTERIM]["send"]``.

The sender takes a status, a reason phrase and header fields, and writes the interim response
at once, unless the request's final response has begun, the client spoke HTTP/1.0 (which has no
1xx, RFC 9110 section 15.2) or the connection is gone: then it sends nothing. An app served by
another server finds no sender and goes without. A leaf module: routes and the protocol class
import it, and it imports nothing of the service.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

INTERIM = "upload_service.interim_response"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_REASON = re.compile(r"[\t\x20-\x7e]*")


def interim_response(status: int, reason: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The bytes of an HTTP/1.1 interim response (``ValueError`` for a status that is not 1xx,
    or a name, value or reason that would break the message)."""
    if not 100 <= status <= 199 or status == 101:
        raise ValueError(f"{status} is not an interim status")
    if not _REASON.fullmatch(reason):
        raise ValueError("the reason phrase has a control character")
    lines = [f"HTTP/1.1 {status} {reason}"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise ValueError(f"the header field {name[:40]!r} is not valid")
        lines.append(f"{name}: {value.strip()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
