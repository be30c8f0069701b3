"""Configuration from ``UPLOAD_*`` environment variables (and an optional ``.env``).

Only entry points build a ``Settings``; invalid values stop start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from upload_service.tus.content_types import parse_allowed_types

MiB = 1024 * 1024
_BASE_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
_HOOK_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")
_HOOK_CALLABLE = re.compile(
    r"python:[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
)
_TAKEN_PATHS = ("/api", "/healthz", "/readyz", "/metrics")  # the other endpoints' own paths


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="UPLOAD_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    data_dir: Path = Path("./data")
    database_url: str = ""
    max_size: int | None = Field(default=None, gt=0)
    expire_after: int = Field(default=7 * 24 * 3600, gt=0)
    # Caps on Upload-Metadata at creation: the raw header value's length and its number of keys
    # (the metadata is stored and echoed on every HEAD).
    max_metadata_bytes: int = Field(default=4096, gt=0, le=1 * MiB)
    max_metadata_keys: int = Field(default=32, gt=0)
    # Media types an upload may have: comma-separated, wildcards like video/*; empty: any type.
    # Checked against the declared type (Upload-Metadata filetype) and the file's first bytes.
    allowed_types: Annotated[tuple[str, ...], NoDecode] = ()
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ("*",)
    # Durability cadence during one long PATCH: fsync + commit the offset after this many bytes or
    # seconds, whichever comes first. A crash loses at most one interval of unacknowledged bytes.
    checkpoint_bytes: int = Field(default=64 * MiB, ge=MiB)
    checkpoint_seconds: float = Field(default=2.0, gt=0)
    # How often received-but-not-yet-durable progress is written to the database during a PATCH.
    progress_seconds: float = Field(default=0.5, gt=0)
    # Request bytes are coalesced into writes of this size (the per-upload memory bound).
    write_buffer: int = Field(default=1 * MiB, ge=64 * 1024, le=64 * MiB)
    # How long a request waits for another request on the same upload to let go of it before 423.
    lock_timeout: float = Field(default=3.0, ge=0)
    # How often the background clean-up expires unfinished uploads past their expiry (seconds).
    cleanup_interval: float = Field(default=600.0, gt=0)
    # SIGTERM/SIGINT: running PATCHes are asked to commit and answer at once; requests still
    # running after this many seconds are cancelled (their durable bytes survive), then it exits.
    shutdown_grace: int = Field(default=10, ge=1, le=3600)
    # Worker processes for ``serve`` (one event loop each; uploads are locked across them).
    workers: int = Field(default=1, ge=1, le=64)
    # Who locks uploads: file (flock, processes of one host), postgres (advisory locks, every
    # replica on the database), auto (postgres when the database is PostgreSQL, else file).
    locker: Literal["auto", "file", "postgres"] = "auto"
    # A PostgreSQL database with the file locker is refused unless this is the only node.
    single_node: bool = False
    # postgres locker: a replica that vanished (host down, network cut) holds its uploads' locks
    # for at most this long; it stops writing itself before then.
    lock_dead_after: float = Field(default=10.0, ge=2.0, le=600.0)
    # Where upload bytes live: local (files under data_dir) or s3 (multipart uploads in a bucket
    # of any S3-compatible object store; credentials from the standard AWS variables or profile).
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_endpoint_url: str | None = None  # MinIO, R2, B2, ...; unset: AWS
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    # All parts of an upload but the last have one size: this, raised (whole MiB) for an upload
    # too long for 10,000 of them (by its Upload-Length; for a deferred length, by the largest
    # allowed upload, UPLOAD_MAX_SIZE, else S3's 5 TiB).
    s3_part_size: int = Field(default=8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)
    # Parts uploaded at the same time by one PATCH (each spooled to a temporary file of its own).
    s3_concurrency: int = Field(default=4, ge=1, le=32)
    # path: https://endpoint/bucket/key (MinIO and most S3-compatible servers); virtual:
    # https://bucket.endpoint/key; auto: path with UPLOAD_S3_ENDPOINT_URL, else virtual (AWS).
    # CRC32 of every part, checked by the object store as it arrives (S3, MinIO, R2); turn off
    # only for a server that rejects checksums.
    s3_checksums: bool = True
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Peers (IPs or CIDRs, or *) whose Forwarded / X-Forwarded-* headers are believed. Loopback by
    # default, as uvicorn's own default: a proxy on this host (nginx terminating TLS) just works.
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1", "::1")
    # Location on creation as a path (/files/<id>) instead of an absolute URL.
    relative_location: bool = False
    # Where the tus endpoint is mounted (under any prefix a proxy announces).
    base_path: str = "/files"
    # Prometheus metrics at GET /metrics (added up across workers with --workers N).
    metrics: bool = True
    # Hooks (README "Hooks and webhooks"). Before a creation: an http(s) URL POSTed the upload to
    # be, or python:package.module:function; it may reject the creation or amend the metadata.
    hook_pre_create: str = ""
    # After state changes (post-create, post-finish, post-terminate, post-expire, written to the
    # outbox with the change): events are POSTed here, signed with hook_secret (required with it).
    hook_url: str = ""
    # ... and/or given to this python:package.module:function (a sync one runs in the thread pool).
    hook_post: str = ""
    hook_secret: SecretStr = SecretStr("")
    # Seconds one call of a pre-create hook or one webhook POST may take (then: 503, or a retry).
    hook_timeout: float = Field(default=10.0, gt=0, le=300)
    # Seconds one call of the UPLOAD_HOOK_POST callable may take (it may copy a whole file).
    hook_post_timeout: float = Field(default=300.0, gt=0, le=24 * 3600)
    # Delivery attempts per event before it is marked failed, the first retry's delay (seconds,
    # doubled for every further one, at most an hour) and how often the outbox is polled.
    hook_max_attempts: int = Field(default=8, ge=1, le=100)
    hook_retry_delay: float = Field(default=2.0, gt=0, le=3600)
    hook_poll_interval: float = Field(default=1.0, gt=0, le=3600)
    # Delivered and failed events are deleted from the outbox this many seconds after they were
    # written (pending ones never are).
    hook_retention: float = Field(default=7 * 24 * 3600, gt=0)

    @field_validator("hook_pre_create")
    @classmethod
    def _check_pre_create(cls, value: str) -> str:
        if value and not (_HOOK_URL.fullmatch(value) or _HOOK_CALLABLE.fullmatch(value)):
            raise ValueError(
                "must be an http(s):// URL or python:package.module:function (a dotted callable)"
            )
        return value

    @field_validator("hook_url")
    @classmethod
    def _check_hook_url(cls, value: str) -> str:
        if value and not _HOOK_URL.fullmatch(value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("hook_post")
    @classmethod
    def _check_hook_post(cls, value: str) -> str:
        if value and not _HOOK_CALLABLE.fullmatch(value):
            raise ValueError("must be python:package.module:function (a dotted callable)")
        return value

    @model_validator(mode="after")
    def _check_hook_secret(self) -> Settings:
        if self.hook_url and not self.hook_secret.get_secret_value():
            raise ValueError(
                "UPLOAD_HOOK_URL needs UPLOAD_HOOK_SECRET: receivers check each event's "
                "Upload-Signature with it"
            )
        return self

    @property
    def events_enabled(self) -> bool:
        """Whether state changes write events to the outbox (someone delivers them)."""
        return bool(self.hook_url or self.hook_post)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

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

    @field_validator("allowed_types", mode="before")
    @classmethod
    def _parse_allowed_types(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_allowed_types(value)
        if isinstance(value, list | tuple):
            return parse_allowed_types(",".join(str(item) for item in value))
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not (
            value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")
        ):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (an async driver)"
            )
        return value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            path = (self.data_dir / "uploads.db").resolve()
            object.__setattr__(self, "database_url", f"sqlite+aiosqlite:///{path}")
        return self

    @model_validator(mode="after")
    def _check_locker(self) -> Settings:
        if self.locker == "postgres" and self.is_sqlite:
            raise ValueError(
                "UPLOAD_LOCKER=postgres needs a PostgreSQL UPLOAD_DATABASE_URL (postgresql+asyncpg://)"
            )
        if self.effective_locker == "file" and not self.is_sqlite and not self.single_node:
            raise ValueError(
                "UPLOAD_LOCKER=file locks uploads on one host only, but the PostgreSQL database "
                "may be shared by replicas on several: use UPLOAD_LOCKER=postgres (or auto), or "
                "set UPLOAD_SINGLE_NODE=true if this host is the only node"
            )
        return self

    @field_validator("s3_endpoint_url", mode="before")
    @classmethod
    def _empty_endpoint(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("s3_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value.startswith("/") or "//" in value:
            raise ValueError("must not start with / or contain //")
        return value

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("UPLOAD_STORAGE=s3 needs UPLOAD_S3_BUCKET (the bucket's name)")
        return self

    @property
    def spool_dir(self) -> Path:
        """Where the S3 store spools the parts it is building (temporary, unlinked files)."""
        return self.data_dir / "spool"

    @property
    def s3_path_style(self) -> bool:
        style = self.s3_addressing_style
        return style == "path" or (style == "auto" and self.s3_endpoint_url is not None)

    @property
    def effective_locker(self) -> Literal["file", "postgres"]:
        if self.locker == "auto":
            return "file" if self.is_sqlite else "postgres"
        return self.locker

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class ConfigError(Exception):
    """Settings could not be loaded; the message names each offending variable."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            if not err["loc"]:  # a rule across settings: its message names them
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            name = "UPLOAD_" + "_".join(str(part) for part in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from exc
