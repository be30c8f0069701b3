"""Hooks (docs/hooks.md): the pre-create hook that may reject or amend a creation,
and the events of state changes, written to the outbox with the change and delivered after."""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from upload_service.settings._base import Group, prefixed, shown

_HOOK_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")
_HOOK_CALLABLE = re.compile(
    r"python:[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
)


class HooksSettings(Group):
    model_config = ConfigDict(alias_generator=prefixed("hook_"))

    pre_create: str = Field(
        default="",
        description="asked before every creation, may reject it or amend the metadata: an "
        "`http(s)://` URL POSTed the upload to be, or `python:package.module:function` (see "
        "[hooks](hooks.md))",
        json_schema_extra=shown("none"),
    )
    url: str = Field(
        default="",
        description="events (post-create, post-finish, post-terminate, post-expire) are POSTed "
        "here, signed; needs `UPLOAD_HOOK_SECRET`",
        json_schema_extra=shown("none"),
    )
    post: str = Field(
        default="",
        description="`python:package.module:function` given every event (a sync one runs in the "
        "thread pool), instead of or besides the URL",
        json_schema_extra=shown("none"),
    )
    secret: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC-SHA256 key of the `Upload-Signature` header (events, and the "
        "pre-create hook's requests when set)",
        json_schema_extra=shown("none"),
    )
    timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="seconds a pre-create call or one webhook POST may take (then: 503, or a "
        "retry)",
    )
    post_timeout: float = Field(
        default=300.0,
        gt=0,
        le=24 * 3600,
        description="seconds one call of the `UPLOAD_HOOK_POST` function may take (it may copy "
        "a whole file)",
    )
    max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        description="delivery attempts per event before it is marked `failed`",
    )
    retry_delay: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="seconds before the first retry; doubled for each further one, at most an hour",
    )
    poll_interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="seconds between looks at the outbox for due events (each process)",
    )
    retention: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="seconds delivered and failed events stay in the outbox (and in "
        "`/deliveries`) after they were written; pending ones are never deleted",
        json_schema_extra=shown("`604800` (a week)"),
    )

    @field_validator("pre_create")
    @classmethod
    def _check_pre_create(cls, value: str) -> str:
        if value and not (_HOOK_URL.fullmatch(value) or _HOOK_CALLABLE.fullmatch(value)):
            raise ValueError(
                "must be an http(s):// URL or python:package.module:function (a dotted callable)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _check_hook_url(cls, value: str) -> str:
        if value and not _HOOK_URL.fullmatch(value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("post")
    @classmethod
    def _check_hook_post(cls, value: str) -> str:
        if value and not _HOOK_CALLABLE.fullmatch(value):
            raise ValueError("must be python:package.module:function (a dotted callable)")
        return value

    @model_validator(mode="after")
    def _check_hook_secret(self) -> HooksSettings:
        if self.url and not self.secret.get_secret_value():
            raise ValueError(
                "UPLOAD_HOOK_URL needs UPLOAD_HOOK_SECRET: receivers check each event's "
                "Upload-Signature with it"
            )
        return self

    @property
    def events_enabled(self) -> bool:
        """Whether state changes write events to the outbox (someone delivers them)."""
        return bool(self.url or self.post)
