"""What the service tells about itself: metrics and logs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from upload_service.settings._base import Group


class ObservabilitySettings(Group):
    metrics: bool = Field(
        default=True,
        description="Prometheus metrics at `GET /metrics` (added up across workers with "
        "`--workers N`); `false` turns the endpoint off (see [metrics](operating.md#metrics))",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text` (a line for humans) or `json` (one JSON object a line, for a log "
        "collector; the Docker image and compose set it); see [logs](operating.md#logs)",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info",
        description="the least severe level logged (`debug`, `info`, `warning`, `error`, "
        "`critical`), by the service, uvicorn and every library; `serve --log-level` overrides",
    )
    access_log: bool = Field(
        default=True,
        description="one access line a request (method, path, status, duration, request and "
        "upload id; see [logs](operating.md#logs)); `false` leaves them out, the other lines stay",
    )

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value
