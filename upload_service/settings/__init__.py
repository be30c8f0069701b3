"""Configuration from ``UPLOAD_*`` environment variables (and an optional ``.env``), as a tree of
groups (``settings.storage.data_dir``, ``settings.auth.jwt_secret``).

Each variable is ``UPLOAD_`` + a field's flat name, its alias (``UPLOAD_AUTH_JWT_SECRET`` is
``auth.jwt_secret``); the flat names are also what ``load_settings(**overrides)`` and
``Settings.replace`` take. Only entry points build a ``Settings``; invalid values stop start-up
with a message naming the variable. docs/configuration.md is generated from the fields
(``upload_service.settings.docs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from upload_service.errors import ConfigError as ConfigError  # re-exported: callers catch it here
from upload_service.settings._base import Group
from upload_service.settings._base import MiB as MiB
from upload_service.settings._base import is_loopback as is_loopback
from upload_service.settings.api import ApiSettings, VideoSettings
from upload_service.settings.auth import JWT_ALGORITHMS as JWT_ALGORITHMS
from upload_service.settings.auth import AuthSettings
from upload_service.settings.database import DatabaseSettings, LockingSettings
from upload_service.settings.hooks import HooksSettings
from upload_service.settings.limits import LimitsSettings
from upload_service.settings.observability import ObservabilitySettings
from upload_service.settings.server import ServerSettings
from upload_service.settings.storage import S3Settings, StorageSettings


class Settings(BaseModel):
    """All settings, one group a concern; built from flat names by ``load_settings``."""

    model_config = ConfigDict(frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    locking: LockingSettings = Field(default_factory=LockingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    hooks: HooksSettings = Field(default_factory=HooksSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @classmethod
    def from_flat(cls, values: Mapping[str, object]) -> Settings:
        """The tree from flat names (``data_dir=``, ``auth_api_keys=``); other names are ignored,
        as the environment's are. Raises ``ValidationError`` located at (group, flat name)."""
        groups: dict[str, dict[str, object]] = {group: {} for group in cls.model_fields}
        for name, value in values.items():
            if name in FLAT_NAMES:
                groups[FLAT_NAMES[name][0]][name] = value
        return cls.model_validate(groups)

    def flat(self) -> dict[str, object]:
        """Every setting by its flat name (the inverse of ``from_flat``)."""
        return {
            name: getattr(getattr(self, group), field)
            for name, (group, field) in FLAT_NAMES.items()
        }

    def replace(self, **changes: object) -> Settings:
        """A copy with some settings changed, by flat name, validated again."""
        unknown = set(changes) - set(FLAT_NAMES)
        if unknown:
            raise TypeError(f"not settings: {', '.join(sorted(unknown))}")
        return Settings.from_flat({**self.flat(), **changes})

    # -- rules across groups; each message names the variables --

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database.url:
            path = (self.storage.data_dir / "uploads.db").resolve()
            database = self.database.model_copy(update={"url": f"sqlite+aiosqlite:///{path}"})
            object.__setattr__(self, "database", database)
        return self

    @model_validator(mode="after")
    def _check_locker(self) -> Settings:
        if self.locking.locker == "postgres" and self.database.is_sqlite:
            raise ValueError(
                "UPLOAD_LOCKER=postgres needs a PostgreSQL UPLOAD_DATABASE_URL (postgresql+asyncpg://)"
            )
        if (
            self.effective_locker == "file"
            and not self.database.is_sqlite
            and not self.locking.single_node
        ):
            raise ValueError(
                "UPLOAD_LOCKER=file locks uploads on one host only, but the PostgreSQL database "
                "may be shared by replicas on several: use UPLOAD_LOCKER=postgres (or auto), or "
                "set UPLOAD_SINGLE_NODE=true if this host is the only node"
            )
        return self

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage.backend == "s3" and not self.s3.bucket:
            raise ValueError("UPLOAD_STORAGE=s3 needs UPLOAD_S3_BUCKET (the bucket's name)")
        return self

    @property
    def effective_locker(self) -> Literal["file", "postgres"]:
        if self.locking.locker == "auto":
            return "file" if self.database.is_sqlite else "postgres"
        return self.locking.locker


def _flat_names() -> dict[str, tuple[str, str]]:
    names: dict[str, tuple[str, str]] = {}
    for group, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type)
        assert issubclass(model, Group)
        for field, field_info in model.model_fields.items():
            names[field_info.alias or field] = (group, field)
    return names


FLAT_NAMES: dict[str, tuple[str, str]] = _flat_names()
"""Each setting's flat name (the variable without ``UPLOAD_``, lower-cased): (group, field)."""


class _EnvironmentBase(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="UPLOAD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )


# The raw values by flat name, as pydantic-settings reads them (the environment over .env over
# nothing); the groups validate them. NoDecode: a list is a comma-separated value, never JSON.
_Environment = create_model(
    "_Environment",
    __base__=_EnvironmentBase,
    **{name: (Annotated[Any, NoDecode], None) for name in FLAT_NAMES},  # type: ignore[call-overload]
)


def variable(loc: tuple[int | str, ...]) -> str | None:
    """The variable an error located at (group, flat name, ...) is about; None for a rule across
    settings (a group's or the tree's), whose message names them itself."""
    if len(loc) < 2:
        return None
    return "UPLOAD_" + "_".join(str(part) for part in loc[1:]).upper()


def load_settings(**overrides: object) -> Settings:
    """The settings from the environment and ``.env``, ``overrides`` (flat names) winning."""
    try:
        environment = _Environment(**overrides)  # type: ignore[arg-type]
        return Settings.from_flat(
            {name: getattr(environment, name) for name in environment.model_fields_set}
        )
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = variable(err["loc"])
            if name is None:
                lines.append(str(err["msg"]).removeprefix("Value error, "))
            else:
                lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from exc


__all__ = [
    "FLAT_NAMES",
    "ApiSettings",
    "AuthSettings",
    "ConfigError",
    "DatabaseSettings",
    "HooksSettings",
    "LimitsSettings",
    "LockingSettings",
    "ObservabilitySettings",
    "S3Settings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "VideoSettings",
    "is_loopback",
    "load_settings",
]
