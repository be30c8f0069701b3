"""Where upload bytes live and how they are written: the data directory, local files or S3."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from upload_service.settings._base import Group, MiB, empty_is_unset, prefixed, shown


class StorageSettings(Group):
    data_dir: Path = Field(
        default=Path("./data"),
        description="upload bytes go to `<dir>/files/`, the default database to `<dir>/uploads.db`",
        json_schema_extra=shown("`./data`"),
    )
    backend: Literal["local", "s3"] = Field(
        default="local",
        alias="storage",
        description="where upload bytes live: `local` (`<data dir>/files/`) or `s3` (multipart "
        "uploads in a bucket of any S3-compatible object store; credentials from the standard "
        "AWS variables or profile; see [S3](s3.md))",
    )
    min_free_bytes: int = Field(
        default=64 * MiB,
        ge=0,
        description="free space kept on the data directory's filesystem: below it `/readyz` is "
        "503 `disk full`, and local storage refuses (507) new uploads that would leave less (the "
        "database, the lock files and the S3 spool need room too); `0`: only a full disk counts",
        json_schema_extra=shown("`67108864` (64 MiB)"),
    )
    reserve_space: bool = Field(
        default=True,
        description="local storage: reserve an upload's whole length at creation (fallocate, "
        "keeping the size) so it cannot run out of space midway (507 at creation if it cannot "
        "fit); `false` for thin-provisioned storage where over-committing is intended",
    )
    write_buffer: int = Field(
        default=1 * MiB,
        ge=64 * 1024,
        le=64 * MiB,
        description="bytes coalesced per disk write (the per-upload memory bound): at most three "
        "such buffers per active upload, and a slow one holds only its last 0.1 s",
        json_schema_extra=shown("`1048576` (1 MiB)"),
    )
    checkpoint_bytes: int = Field(
        default=64 * MiB,
        ge=MiB,
        description="make durable (fsync) and commit the offset after this many bytes of one "
        "PATCH; a crash loses at most one interval of unacknowledged bytes",
        json_schema_extra=shown("`67108864` (64 MiB)"),
    )
    checkpoint_seconds: float = Field(
        default=2.0, gt=0, description="... or after this many seconds, whichever comes first"
    )
    body_idle_timeout: float = Field(
        default=60.0,
        gt=0,
        description="seconds a request body may go without a byte before the service ends the "
        "request as if its client had gone: what arrived is made durable and committed, the "
        "upload's lock is let go, and the answer is 204 with the offset reached",
    )
    progress_seconds: float = Field(
        default=0.5,
        gt=0,
        description="how often `received` (not yet durable) progress is written to the database "
        "during a PATCH",
    )

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def spool_dir(self) -> Path:
        """Where the S3 store spools the parts it is building (temporary, unlinked files)."""
        return self.data_dir / "spool"


class S3Settings(Group):
    model_config = ConfigDict(alias_generator=prefixed("s3_"))

    bucket: str = Field(
        default="",
        description="the bucket; it must exist",
        json_schema_extra=shown("(required with `s3`)"),
    )
    endpoint_url: str | None = Field(
        default=None,
        description="the S3-compatible endpoint: MinIO, Cloudflare R2, Backblaze B2, ...",
        json_schema_extra=shown("AWS"),
    )
    public_endpoint_url: str | None = Field(
        default=None,
        description="the endpoint browsers reach, named by the presigned URLs of direct uploads "
        "and downloads (the signature covers the host): set it when the service reaches the "
        "object store by an internal name; no request goes to it from the service",
        json_schema_extra=shown("`UPLOAD_S3_ENDPOINT_URL`"),
    )
    region: str = Field(default="us-east-1", description="the bucket's region (`auto` for R2)")
    prefix: str = Field(
        default="", description="key prefix of every object the service writes (`uploads/`)"
    )
    part_size: int = Field(
        default=8 * MiB,
        ge=5 * MiB,
        le=5 * 1024 * MiB,
        description="multipart part size, 5 MiB-5 GiB: all parts of an upload but the last have "
        "this size, raised (whole MiB) only for an upload too long for 10,000 of them (by its "
        "`Upload-Length`; for a deferred length, by `UPLOAD_MAX_SIZE`, else S3's 5 TiB)",
        json_schema_extra=shown("`8388608` (8 MiB)"),
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=32,
        description="parts one upload sends at the same time while it receives the next (each "
        "spooled to a temporary file of its own)",
    )
    checksums: bool = Field(
        default=True,
        description="CRC32 of every part, checked by the object store as it arrives (S3, MinIO, "
        "R2); `false` only for a server that rejects them",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="`path` (`endpoint/bucket/key`, MinIO and most S3-compatible servers), "
        "`virtual` (`bucket.endpoint/key`); `auto`: path with `UPLOAD_S3_ENDPOINT_URL`, virtual "
        "on AWS",
    )
    direct_url_ttl: int = Field(
        default=900,
        ge=60,
        le=7 * 24 * 3600,
        description="direct uploads ([Direct uploads](direct-uploads.md)): seconds a presigned "
        "part URL or form-POST policy handed to a browser is valid",
    )
    direct_poll_interval: float = Field(
        default=2.0,
        gt=0,
        description="direct uploads: seconds between looks for the objects of form-POST uploads "
        "(which tell the service nothing when they end), on every replica",
    )
    download_redirect: bool = Field(
        default=False,
        description="downloads of ready uploads (`GET /files/<id>`) answer `302` to a presigned "
        "GET on the bucket (valid `UPLOAD_S3_DIRECT_URL_TTL`), so their bytes skip the service",
    )

    _empty_endpoint = field_validator("endpoint_url", "public_endpoint_url", mode="before")(
        empty_is_unset
    )

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value.startswith("/") or "//" in value:
            raise ValueError("must not start with / or contain //")
        return value

    @property
    def path_style(self) -> bool:
        style = self.addressing_style
        return style == "path" or (style == "auto" and self.endpoint_url is not None)
