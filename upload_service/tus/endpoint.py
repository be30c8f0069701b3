"""Where the tus endpoint is, as one request's client sees it: upload URLs out and back in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from upload_service.errors import BadRequest

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}/?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` with case and default ports normalised; None when unparsable."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The tus endpoint of one request.

    ``path`` is the mount path under any prefix a proxy announced (``/uploads/files``);
    ``origin`` is ``scheme://host[:port]`` as the client used it, or None when unknown (a handler
    called without HTTP): upload URLs are then relative, and absolute ones are matched by path.
    """

    path: str = "/files"
    origin: str | None = None

    def url(self, upload_id: str, *, relative: bool = False) -> str:
        path = f"{self.path}/{upload_id}"
        return path if relative or self.origin is None else self.origin + path

    def upload_id(self, url: str) -> str:
        """The id of an upload named by an absolute or relative URL of this endpoint (relative
        ones resolved against the endpoint, as a client resolves a ``Location``)."""
        base = (self.origin or "http://unknown") + self.path + "/"
        try:
            parts = urlsplit(urljoin(base, url))
        except ValueError:
            parts = None
        if parts is not None and self.origin is not None:
            ours = urlsplit(self.origin)
            if _origin_key(parts.scheme, parts.netloc) != _origin_key(ours.scheme, ours.netloc):
                raise BadRequest(
                    f"Upload-Concat names {url[:100]!r}, which is not an upload URL of this "
                    f"server ({base})"
                )
        prefix = self.path + "/"
        if parts is None or not parts.path.startswith(prefix):
            raise BadRequest(f"Upload-Concat names {url[:100]!r}, which is not an upload URL")
        rest = parts.path.removeprefix(prefix)
        if not _UPLOAD_ID.fullmatch(rest):
            raise BadRequest(f"Upload-Concat names {url[:100]!r}, which is not an upload URL")
        return rest.rstrip("/")


NO_ENDPOINT = Endpoint()  # where no request says: the default mount path, origin unknown
