"""The JSON API's downloads and progress streams, and the video details of finished uploads."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from upload_service.settings._base import Group, prefixed


class ApiSettings(Group):
    download_verify_wait: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="seconds a download of an upload still `verifying` waits for the verdict, "
        "and one of a final upload being assembled for its assembly, before a 503 with "
        "`Retry-After`; `0`: the 503 at once",
    )
    sse_poll_interval: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="seconds between the database reads of one `GET /api/uploads/{id}/events` "
        "stream (an event is sent when something changed)",
    )
    sse_heartbeat: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="seconds of quiet after which an events stream sends a heartbeat comment "
        "(proxies close idle streams)",
    )


class VideoSettings(Group):
    model_config = ConfigDict(alias_generator=prefixed("video_"))

    probe: bool = Field(
        default=True,
        description="describe verified videos with ffprobe (container, duration, codecs, "
        "resolution, frame rate) before they become `ready` (local storage only); off by "
        "`false`, and without ffprobe installed (see [video details](protocol.md#video-details))",
    )
    probe_timeout: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="seconds ffprobe may take on one file before it is killed (the upload is "
        "ready without details)",
    )
    ffprobe: str = Field(
        default="ffprobe",
        min_length=1,
        alias="ffprobe",
        description="the ffprobe command (a name looked up on `PATH`, or a path)",
    )
