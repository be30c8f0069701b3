"""What an upload may be: its size, lifetime, metadata, media type and each owner's quota."""

from __future__ import annotations

from pydantic import Field, field_validator

from upload_service.settings._base import Group, MiB, shown
from upload_service.tus.content_types import parse_allowed_types


class LimitsSettings(Group):
    max_size: int | None = Field(
        default=None,
        gt=0,
        description="largest upload in bytes (`Tus-Max-Size`)",
        json_schema_extra=shown("unlimited"),
    )
    expire_after: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="seconds an unfinished upload lives after its last PATCH",
        json_schema_extra=shown("`604800` (a week)"),
    )
    cleanup_interval: float = Field(
        default=600.0,
        gt=0,
        description="seconds between clean-up passes that expire unfinished uploads past their "
        "expiry",
    )
    orphan_grace: float = Field(
        default=600.0,
        ge=0,
        description="seconds stored bytes that no upload row names (left by a crash between "
        "creating an upload's storage and inserting its row) are kept before a clean-up pass "
        "deletes them",
        json_schema_extra=shown("`600` (ten minutes)"),
    )
    # the metadata is stored and echoed on every HEAD
    max_metadata_bytes: int = Field(
        default=4096,
        gt=0,
        le=1 * MiB,
        description="largest raw `Upload-Metadata` header value at creation (400 beyond)",
    )
    max_metadata_keys: int = Field(
        default=32, gt=0, description="most keys in `Upload-Metadata` (400 beyond)"
    )
    allowed_types: tuple[str, ...] = Field(
        default=(),
        description="comma-separated media types and wildcards (`video/*,image/png`) an upload "
        "may have: the declared `filetype` and the file's first bytes are checked (415 "
        "otherwise); add `application/octet-stream` to let through files whose type is not "
        "recognised",
        json_schema_extra=shown("empty (any type)"),
    )
    quota_uploads: int | None = Field(
        default=None,
        gt=0,
        description="unfinished uploads per authenticated owner (403 beyond)",
        json_schema_extra=shown("unlimited"),
    )
    quota_bytes: int | None = Field(
        default=None,
        gt=0,
        description="bytes stored per authenticated owner: lengths of live uploads, deferred "
        "ones by their offset (403 beyond)",
        json_schema_extra=shown("unlimited"),
    )

    @field_validator("allowed_types", mode="before")
    @classmethod
    def _parse_allowed_types(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_allowed_types(value)
        if isinstance(value, list | tuple):
            return parse_allowed_types(",".join(str(item) for item in value))
        return value
