"""The database (where uploads' rows live) and who locks uploads against concurrent requests."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from upload_service.settings._base import Group, prefixed, shown


class DatabaseSettings(Group):
    model_config = ConfigDict(alias_generator=prefixed("database_"))

    url: str = Field(
        default="",
        description="SQLAlchemy async URL (`sqlite+aiosqlite://` or `postgresql+asyncpg://`)",
        json_schema_extra=shown("`sqlite+aiosqlite:///<data dir>/uploads.db`"),
    )
    busy_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="SQLite: seconds a statement waits for another connection's lock before the "
        'request is a 503 with `Retry-After` ("database is locked")',
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not (
            value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")
        ):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (an async driver)"
            )
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class LockingSettings(Group):
    model_config = ConfigDict(alias_generator=prefixed("lock_"))

    locker: Literal["auto", "file", "postgres"] = Field(
        default="auto",
        alias="locker",
        description="who locks uploads: `file` (flock, the processes of one host), `postgres` "
        "(advisory locks, every replica on the database), `auto` (`postgres` when the database "
        "is PostgreSQL, else `file`)",
    )
    single_node: bool = Field(
        default=False,
        alias="single_node",
        description="allow `UPLOAD_LOCKER=file` on a PostgreSQL database: only when this host "
        "is the only node",
    )
    dead_after: float = Field(
        default=10.0,
        ge=2.0,
        le=600.0,
        description="seconds, at most, that a replica that vanished (host down, network cut) "
        "keeps its uploads' locks (postgres locker); it stops writing on its own before then",
    )
    timeout: float = Field(
        default=3.0,
        ge=0,
        description="seconds a request waits for another request on the same upload to let go "
        "of it before 423",
    )
