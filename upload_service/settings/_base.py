"""What the groups of settings share: the base model, the byte units and small parsers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, JsonValue

MiB = 1024 * 1024


def prefixed(prefix: str) -> Callable[[str], str]:
    """The alias generator of a group whose variables share a prefix (``auth_`` + ``jwt_secret``)."""

    def alias(name: str) -> str:
        return prefix + name

    return alias


class Group(BaseModel):
    """One group of settings. Each field's alias is its flat name, the variable's name without
    ``UPLOAD_`` (``UPLOAD_AUTH_JWT_SECRET`` is ``auth.jwt_secret``, alias ``auth_jwt_secret``);
    its description is the meaning documented in docs/configuration.md."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_default=True
    )


def shown(default: str) -> dict[str, JsonValue]:
    """Field metadata: the default as the documentation shows it, where the value alone says
    too little (``unlimited``, ``64 MiB``, ``derived from the JWT secret``)."""
    return {"shown_default": default}


def split_commas(value: object) -> object:
    """A comma-separated variable as a tuple of its non-empty, stripped items."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def empty_is_unset(value: object) -> object:
    return None if value == "" else value


def is_loopback(host: str) -> bool:
    """Whether a bind address (or URL host) is this machine's loopback only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
