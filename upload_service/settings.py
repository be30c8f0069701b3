"""Configuration from ``UPLOAD_*`` environment variables (and an optional ``.env``).

Only entry points build a ``Settings``; invalid values stop start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from upload_service.errors import ConfigError as ConfigError  # re-exported: callers catch it here
from upload_service.tus.content_types import parse_allowed_types

MiB = 1024 * 1024
_BASE_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
_HOOK_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")
_HOOK_CALLABLE = re.compile(
    r"python:[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
)
# the other endpoints' own paths (/static: the upload page's files; /docs: the API docs)
_TAKEN_PATHS = ("/api", "/docs", "/healthz", "/readyz", "/metrics", "/static")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
JWT_ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)


def is_loopback(host: str) -> bool:
    """Whether a bind address (or URL host) is this machine's loopback only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    # SQLite: seconds a statement waits for another connection's lock before the request is a
    # 503 with Retry-After ("database is locked").
    database_busy_timeout: float = Field(default=10.0, gt=0, le=600)
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
    # Free space (bytes) kept on the data directory's filesystem: below it /readyz answers 503
    # "disk full", and local storage refuses new uploads (507) that would leave less free (the
    # database, the lock files and the S3 spool need room too). 0: only a full disk counts.
    min_free_bytes: int = Field(default=64 * MiB, ge=0)
    # Local storage: reserve an upload's whole length at creation (fallocate, keeping the size)
    # so it cannot run out of space midway; an upload that cannot fit is a 507 at creation.
    reserve_space: bool = True
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
    # A download of an upload still being verified waits this long for the verdict (then 503
    # with Retry-After); 0: answers 503 at once.
    download_verify_wait: float = Field(default=10.0, ge=0, le=300)
    # GET /api/uploads/{id}/events: how often a stream reads the upload from the database, and
    # the seconds of quiet after which it sends a heartbeat comment (proxies close idle streams).
    sse_poll_interval: float = Field(default=0.5, gt=0, le=60)
    sse_heartbeat: float = Field(default=15.0, gt=0, le=600)
    # Video details (README "Video details"): ffprobe describes a video before it becomes ready
    # (local storage only), given at most this many seconds; the command's name or path.
    video_probe: bool = True
    video_probe_timeout: float = Field(default=30.0, gt=0, le=600)
    ffprobe: str = Field(default="ffprobe", min_length=1)
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
    # The upload page (GET /): bytes per PATCH it sends. A reload or a broken connection loses at
    # most the chunk in flight; keep it under a proxy's body size limit (nginx: 1 MiB by default).
    page_chunk_size: int = Field(default=8 * MiB, ge=64 * 1024, le=1024 * MiB)
    # Prometheus metrics at GET /metrics (added up across workers with --workers N).
    metrics: bool = True
    # Log lines: text (for a terminal) or json (one object a line, for a log collector).
    log_format: Literal["text", "json"] = "text"
    # The least severe level logged, by our loggers, uvicorn's and every library's.
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # One access line a request (method, path, status, duration, request and upload id).
    access_log: bool = True

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    # -- authentication (upload_service/auth; README "Authentication") --
    # auto: JWTs if a JWT key is configured, API keys if any are, either if both; open (anyone
    # reaches everything) if neither, which start-up allows only on a loopback UPLOAD_HOST.
    # jwt / api-key: only that kind (its setting required); none: open on any address.
    auth: Literal["auto", "jwt", "api-key", "none"] = "auto"
    # JWT keys, one of: an HS256 secret (32 bytes or more); a PEM public key file (RSA: RS256,
    # EC P-256: ES256); a JWKS URL (https, or http on loopback), re-fetched on an unknown kid.
    auth_jwt_secret: SecretStr | None = None
    auth_jwt_public_key_file: Path | None = None
    auth_jwks_url: str | None = None
    # The algorithms accepted (never the token's choice); empty: derived from the key as above
    # (RS256,ES256 for a JWKS).
    auth_jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = ()
    auth_jwt_issuer: str | None = None  # iss a token must carry (unset: not checked)
    auth_jwt_audience: str | None = None  # aud a token must carry (unset: a token with aud fails)
    auth_jwt_leeway: float = Field(default=0.0, ge=0, le=300)  # clock skew allowed on exp/nbf
    # A JWKS is fetched at most this often for tokens naming a kid it does not have.
    auth_jwks_refetch_interval: float = Field(default=30.0, ge=0, le=3600)
    # owner:sha256hex entries, comma-separated (upload-service hash-key prints one).
    auth_api_keys: Annotated[tuple[tuple[str, str], ...], NoDecode] = ()
    # HMAC key of signed download URLs; unset: derived from UPLOAD_AUTH_JWT_SECRET (required
    # when authentication is on without one). Every replica needs the same.
    auth_signing_key: SecretStr | None = None
    # Lifetime of the signed download URLs the JSON API hands out (seconds).
    signed_url_ttl: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    # Per-owner caps (authenticated owners only; unset: none): unfinished uploads, and bytes
    # stored (lengths of live uploads, deferred ones by their offset). 403 beyond.
    quota_uploads: int | None = Field(default=None, gt=0)
    quota_bytes: int | None = Field(default=None, gt=0)

    @field_validator("auth_jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("auth_jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in JWT_ALGORITHMS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not one of {', '.join(JWT_ALGORITHMS)}")
        return value

    @field_validator("auth_api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        entries: list[tuple[str, str]] = []
        for raw in filter(None, (part.strip() for part in value.split(","))):
            owner, colon, digest = raw.rpartition(":")
            if not colon or not owner or not _SHA256_HEX.fullmatch(digest.lower()):
                raise ValueError(
                    "entries are owner:sha256hex (the SHA-256 of the key in 64 hex digits, "
                    "never the key; upload-service hash-key prints one)"
                )
            entries.append((owner, digest.lower()))
        if len({digest for _, digest in entries}) != len(entries):
            raise ValueError("the same key is listed twice")
        return tuple(entries)

    @field_validator("auth_jwt_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (an HS256 key of 256 bits)")
        return value

    @field_validator("auth_signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @field_validator("auth_jwks_url", "auth_jwt_issuer", "auth_jwt_audience", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "auth_jwt_secret", "auth_jwt_public_key_file", "auth_signing_key", mode="before"
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("auth_jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and is_loopback(parts.hostname or ""):
            return value
        raise ValueError("must be an https:// URL (http:// only on a loopback address)")

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        sources = [
            name
            for name, value in (
                ("UPLOAD_AUTH_JWT_SECRET", self.auth_jwt_secret),
                ("UPLOAD_AUTH_JWT_PUBLIC_KEY_FILE", self.auth_jwt_public_key_file),
                ("UPLOAD_AUTH_JWKS_URL", self.auth_jwks_url),
            )
            if value is not None
        ]
        if len(sources) > 1:
            raise ValueError(f"set one JWT key source, not {' and '.join(sources)}")
        if self.auth == "none" and (sources or self.auth_api_keys):
            configured = " and ".join(
                [*sources, *(["UPLOAD_AUTH_API_KEYS"] * bool(self.auth_api_keys))]
            )
            raise ValueError(f"UPLOAD_AUTH=none runs open, but {configured} is set")
        if self.auth == "jwt" and not sources:
            raise ValueError(
                "UPLOAD_AUTH=jwt needs UPLOAD_AUTH_JWT_SECRET, UPLOAD_AUTH_JWT_PUBLIC_KEY_FILE "
                "or UPLOAD_AUTH_JWKS_URL"
            )
        if self.auth == "api-key" and not self.auth_api_keys:
            raise ValueError("UPLOAD_AUTH=api-key needs UPLOAD_AUTH_API_KEYS")
        if self.auth_jwt_algorithms and sources:
            symmetric = self.auth_jwt_secret is not None
            wrong = [
                name for name in self.auth_jwt_algorithms if name.startswith("HS") != symmetric
            ]
            if wrong:
                kind = "a secret takes HS*" if symmetric else "public keys take RS*, PS*, ES*"
                raise ValueError(f"UPLOAD_AUTH_JWT_ALGORITHMS: {wrong[0]} does not fit: {kind}")
        if self.auth_enabled and self.auth_signing_key is None and self.auth_jwt_secret is None:
            raise ValueError(
                "authentication is on: set UPLOAD_AUTH_SIGNING_KEY (32 bytes or more, the same "
                "on every replica) for signed download URLs"
            )
        return self

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
    def jwt_enabled(self) -> bool:
        configured = (self.auth_jwt_secret, self.auth_jwt_public_key_file, self.auth_jwks_url)
        return self.auth in ("auto", "jwt") and any(value is not None for value in configured)

    @property
    def api_keys_enabled(self) -> bool:
        return self.auth in ("auto", "api-key") and bool(self.auth_api_keys)

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must authenticate (else the service runs open)."""
        return self.jwt_enabled or self.api_keys_enabled

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
