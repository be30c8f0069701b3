"""Where and how the service listens: bind address, workers, proxies, the paths it serves."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator

from upload_service.settings._base import Group, MiB, shown, split_commas

_BASE_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
# the other endpoints' own paths (/static: the upload page's files; /docs: the API docs)
# the other routes at the root (``/s3`` and ``/companion``: the direct uploads' endpoints)
_TAKEN_PATHS = (
    "/api",
    "/docs",
    "/healthz",
    "/readyz",
    "/metrics",
    "/static",
    "/s3",
    "/companion",
)


class ServerSettings(Group):
    host: str = Field(default="127.0.0.1", description="bind address (`serve --host` overrides)")
    port: int = Field(default=8080, ge=0, le=65535, description="port (`serve --port` overrides)")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="worker processes for `serve` (`serve --workers N` overrides); one event "
        "loop each, uploads are locked across them",
    )
    shutdown_grace: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="seconds requests may run after SIGTERM/SIGINT before they are cancelled "
        "(running PATCHes commit and answer at once, durable bytes survive; see "
        "[stopping](operating.md#stopping))",
    )
    cors_origins: tuple[str, ...] = Field(
        default=("*",),
        description="comma-separated allowed browser origins; empty disables CORS",
    )
    trusted_proxies: tuple[str, ...] = Field(
        default=("127.0.0.1", "::1"),
        description="comma-separated IPs and CIDR networks (or `*`) of reverse proxies whose "
        "`Forwarded` / `X-Forwarded-*` headers are believed; empty trusts none. Loopback by "
        "default, as uvicorn's own: a proxy on this host (nginx terminating TLS) just works "
        "(see [behind a proxy](operating.md#behind-a-proxy))",
    )
    relative_location: bool = Field(
        default=False,
        description="`Location` on creation as a path (`/files/<id>`, with any proxy prefix) "
        "instead of an absolute URL; tus clients resolve either",
    )
    base_path: str = Field(
        default="/files",
        description="where the tus endpoint is mounted (starts with `/`, no trailing `/`, no "
        "`..`; not under `/api`, `/docs`, `/healthz`, `/readyz`, `/metrics`, `/static`, `/s3`, "
        "`/companion`)",
    )
    page_chunk_size: int = Field(
        default=8 * MiB,
        ge=64 * 1024,
        le=1024 * MiB,
        description="bytes per PATCH the upload page (`GET /`) sends, 64 KiB to 1 GiB: a reload "
        "or a broken connection loses at most one chunk; keep it under a proxy's body size "
        "limit (nginx: 1 MiB by default)",
        json_schema_extra=shown("`8388608` (8 MiB)"),
    )

    header_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a client has to send a request's headers, from its connection or "
        "its request's first byte, before it is answered 408 and disconnected (slowloris "
        "clients, idle connections that never ask)",
    )
    interim_responses: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="when the IETF draft's `104 (Upload Resumption Supported)` is sent on a "
        "creation with a body: `auto` unless the request came through a proxy "
        "(`Forwarded` or `X-Forwarded-For`), `always`, or `never`. nginx cannot pass a 104 "
        "on: one that arrives while it still sends the body becomes its final answer "
        "(see [the IETF draft](ietf-draft.md#behind-a-proxy))",
    )
    shed_latency: float = Field(
        default=0.5,
        ge=0,
        description="past capacity, shed load: when even the quickest answer to a request "
        "without a body took longer than this many seconds over the last second, new requests "
        "get 503 with `Retry-After: 1` until answers are quick again (`/healthz`, `/readyz` and "
        "`/metrics` never are); `0` turns shedding off",
    )

    _split = field_validator("cors_origins", "trusted_proxies", mode="before")(split_commas)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        checked = []
        for entry in value:
            if entry == "*":
                checked.append(entry)
                continue
            try:
                checked.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, a CIDR network or *") from None
        return tuple(checked)

    @field_validator("base_path")
    @classmethod
    def _check_base_path(cls, value: str) -> str:
        if not _BASE_PATH.fullmatch(value) or any(
            segment in (".", "..") for segment in value.split("/")
        ):
            raise ValueError(
                "must be a path like /files: start with /, no trailing /, no // or .., "
                "letters, digits and -._~ only"
            )
        if any(value == taken or value.startswith(taken + "/") for taken in _TAKEN_PATHS):
            raise ValueError(f"must not be or lie under {', '.join(_TAKEN_PATHS)}")
        return value
