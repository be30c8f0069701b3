"""Settings from ``UPLOAD_*`` variables, the command line, and the schema the service starts on."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio.to_thread
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import inspect

from tests.conftest import make_settings
from upload_service.app import build_locker, build_store, create_app, handler_config
from upload_service.cli import main
from upload_service.db.migrate import (
    SCHEMA_REVISION,
    SchemaError,
    alembic_config,
    head_revision,
    upgrade,
)
from upload_service.db.models import Base
from upload_service.locking.file import FileLocker
from upload_service.locking.postgres import PostgresLocker
from upload_service.settings import FLAT_NAMES, ConfigError, Settings, load_settings
from upload_service.storage.s3.store import S3Store

WEEK = 7 * 24 * 3600
SUBPROCESS_GUARD = 120  # seconds; a hang is a failure, not a measurement


def _child_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("UPLOAD_")}
    env.update(values)
    return env


def _script(name: str) -> Path:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{path} is missing: is the package installed in this environment?"
    return path


def _revision(database: Path) -> str | None:
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        connection.close()
    assert len(rows) == 1
    value: str = rows[0][0]
    return value


# -- settings -------------------------------------------------------------------------------------


def test_defaults(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.storage.data_dir == Path("./data")
    expected = (clean_env / "data" / "uploads.db").resolve()
    assert settings.database.url == f"sqlite+aiosqlite:///{expected}"
    assert settings.limits.expire_after == WEEK
    assert settings.limits.max_size is None
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.storage.files_dir == Path("./data/files")
    assert settings.database.is_sqlite
    assert (settings.limits.max_metadata_bytes, settings.limits.max_metadata_keys) == (4096, 32)
    assert settings.limits.allowed_types == ()
    config = handler_config(settings)
    assert (config.max_metadata_bytes, config.max_metadata_keys) == (4096, 32)
    assert config.allowed_types == ()


def test_environment_variables(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_DATA_DIR", str(clean_env / "elsewhere"))
    monkeypatch.setenv("UPLOAD_MAX_SIZE", "1048576")
    monkeypatch.setenv("UPLOAD_EXPIRE_AFTER", "60")
    monkeypatch.setenv("UPLOAD_PORT", "9000")
    monkeypatch.setenv("UPLOAD_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = load_settings()
    assert settings.storage.data_dir == clean_env / "elsewhere"
    expected = clean_env / "elsewhere" / "uploads.db"
    assert settings.database.url == f"sqlite+aiosqlite:///{expected}"
    assert settings.limits.max_size == 1048576
    assert settings.limits.expire_after == 60
    assert settings.server.port == 9000
    assert settings.server.cors_origins == ("https://a.example", "https://b.example")


def test_an_explicit_database_url_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+asyncpg://user@db.example/uploads"
    monkeypatch.setenv("UPLOAD_DATABASE_URL", url)
    settings = load_settings()
    assert settings.database.url == url
    assert not settings.database.is_sqlite


PG_URL = "postgresql+asyncpg://user@db.example/uploads"


@pytest.mark.parametrize(
    ("env", "locker"),
    [
        ({}, FileLocker),  # the embedded default: one host
        ({"UPLOAD_DATABASE_URL": PG_URL}, PostgresLocker),  # auto: replicas share the database
        ({"UPLOAD_DATABASE_URL": PG_URL, "UPLOAD_LOCKER": "postgres"}, PostgresLocker),
        (
            {"UPLOAD_DATABASE_URL": PG_URL, "UPLOAD_LOCKER": "file", "UPLOAD_SINGLE_NODE": "true"},
            FileLocker,
        ),
        ({"UPLOAD_LOCKER": "file"}, FileLocker),
    ],
)
async def test_the_locker_follows_the_database_unless_told(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], locker: type
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    built = build_locker(load_settings())
    try:
        assert isinstance(built, locker)
    finally:
        await built.aclose()  # never connected: nothing is built at construction


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"UPLOAD_DATABASE_URL": PG_URL, "UPLOAD_LOCKER": "file"}, ("UPLOAD_SINGLE_NODE",)),
        ({"UPLOAD_LOCKER": "postgres"}, ("UPLOAD_DATABASE_URL",)),
        ({"UPLOAD_LOCKER": "redis"}, ()),
        ({"UPLOAD_LOCK_DEAD_AFTER": "1"}, ()),
    ],
)
def test_a_locker_that_cannot_work_is_refused_at_start(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: tuple[str, ...]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    named = "UPLOAD_LOCKER" if "UPLOAD_LOCKER" in env else "UPLOAD_LOCK_DEAD_AFTER"
    assert named in message
    assert all(name in message for name in names)
    assert "\n" not in message


def test_a_dotenv_file_is_read_and_the_environment_overrides_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("UPLOAD_MAX_SIZE=123\nUPLOAD_EXPIRE_AFTER=77\n")
    monkeypatch.setenv("UPLOAD_EXPIRE_AFTER", "88")
    settings = load_settings()
    assert settings.limits.max_size == 123
    assert settings.limits.expire_after == 88


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPLOAD_MAX_SIZE", "-5"),
        ("UPLOAD_MAX_SIZE", "0"),
        ("UPLOAD_MAX_SIZE", "lots"),
        ("UPLOAD_PORT", "abc"),
        ("UPLOAD_PORT", "70000"),
        ("UPLOAD_DATABASE_URL", "mysql://x"),
        ("UPLOAD_DATABASE_URL", "sqlite:///sync.db"),  # not an async driver
        ("UPLOAD_EXPIRE_AFTER", "0"),
        ("UPLOAD_EXPIRE_AFTER", "soon"),
        ("UPLOAD_CHECKPOINT_BYTES", "1000"),
        ("UPLOAD_WRITE_BUFFER", "1"),
        ("UPLOAD_LOCK_TIMEOUT", "-1"),
        ("UPLOAD_WORKERS", "0"),
        ("UPLOAD_WORKERS", "many"),
        ("UPLOAD_SHUTDOWN_GRACE", "0"),
        ("UPLOAD_SHUTDOWN_GRACE", "soon"),
        ("UPLOAD_MAX_METADATA_BYTES", "0"),
        ("UPLOAD_MAX_METADATA_BYTES", "big"),
        ("UPLOAD_MAX_METADATA_KEYS", "0"),
        ("UPLOAD_ALLOWED_TYPES", "video"),
        ("UPLOAD_ALLOWED_TYPES", "video/mp4,,video/webm"),
    ],
)
def test_an_invalid_value_is_a_config_error_naming_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid configuration: ")
    assert f"{name}: " in message
    others = {"UPLOAD_MAX_SIZE", "UPLOAD_PORT", "UPLOAD_DATABASE_URL", "UPLOAD_EXPIRE_AFTER"}
    assert not any(other in message for other in others - {name})


def test_every_invalid_variable_is_named(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_MAX_SIZE", "-5")
    monkeypatch.setenv("UPLOAD_PORT", "abc")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "UPLOAD_MAX_SIZE" in str(caught.value)
    assert "UPLOAD_PORT" in str(caught.value)


def test_every_variable_sets_its_field_in_the_tree(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UPLOAD_ + a flat name reaches its group's field (the names are the variables, exactly)."""
    assert FLAT_NAMES["auth_jwt_issuer"] == ("auth", "jwt_issuer")
    assert FLAT_NAMES["storage"] == ("storage", "backend")
    assert FLAT_NAMES["lock_timeout"] == ("locking", "timeout")
    monkeypatch.setenv("UPLOAD_AUTH_JWT_ISSUER", "https://issuer.example")
    monkeypatch.setenv("UPLOAD_HOOK_POLL_INTERVAL", "7")
    monkeypatch.setenv("UPLOAD_LOCK_TIMEOUT", "1.5")
    monkeypatch.setenv("upload_s3_region", "eu-west-1")  # names are not case-sensitive
    settings = load_settings()
    assert settings.auth.jwt_issuer == "https://issuer.example"
    assert settings.hooks.poll_interval == 7
    assert settings.locking.timeout == 1.5
    assert settings.s3.region == "eu-west-1"
    assert settings.flat()["hook_poll_interval"] == 7


def test_replace_validates_the_copy(clean_env: Path) -> None:
    settings = load_settings()
    changed = settings.replace(max_size=10, log_level="DEBUG")
    assert (changed.limits.max_size, changed.observability.log_level) == (10, "debug")
    assert settings.limits.max_size is None  # the original is untouched
    with pytest.raises(TypeError, match="not settings: max_sise"):
        settings.replace(max_sise=10)


def test_a_rule_of_a_group_is_reported_by_its_own_message(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_HOOK_URL", "https://hooks.example/in")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid configuration: UPLOAD_HOOK_URL needs UPLOAD_HOOK_SECRET: receivers check each "
        "event's Upload-Signature with it"
    )


# -- the command line -----------------------------------------------------------------------------


def test_check_config_prints_the_settings(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPLOAD_MAX_SIZE", "4096")
    assert main(["check-config"]) == 0
    shown = Settings.model_validate_json(capsys.readouterr().out)
    assert shown.limits.max_size == 4096
    assert shown.limits.expire_after == WEEK


def test_check_config_with_an_invalid_value_exits_2_naming_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPLOAD_PORT", "abc")
    with pytest.raises(SystemExit) as caught:
        main(["check-config"])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert "UPLOAD_PORT" in captured.err
    assert captured.out == ""


async def test_migrate_creates_the_database_at_head_and_the_app_starts_on_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = clean_env / "fresh" / "data"
    monkeypatch.setenv("UPLOAD_DATA_DIR", str(data_dir))
    # Alembic runs its own event loop, so the command runs in a worker thread, as from a shell.
    assert await anyio.to_thread.run_sync(main, ["migrate"]) == 0
    database = data_dir / "uploads.db"
    assert database.is_file()
    assert _revision(database) == head_revision()
    assert await anyio.to_thread.run_sync(main, ["migrate"]) == 0  # a second run changes nothing
    assert _revision(database) == head_revision()

    app = create_app(load_settings(), settle_heap=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ready = await client.get("/readyz")
            created = await client.post(
                "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"}
            )
    assert ready.status_code == 200, ready.text
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_a_file_that_is_not_a_database_fails_with_one_line(clean_env: Path, command: str) -> None:
    database = clean_env / "data" / "uploads.db"
    database.parent.mkdir()
    garbage = b"not a database, " * 64
    database.write_bytes(garbage)
    result = subprocess.run(
        [str(_script("upload-service")), command, *(["--port", "0"] if command == "serve" else [])],
        cwd=clean_env,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot migrate the database: file is not a database" in result.stderr
    assert "Traceback" not in result.stderr
    assert database.read_bytes() == garbage


def test_python_dash_m_runs_the_same_command_line(clean_env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "upload_service", "check-config"],
        cwd=clean_env,
        env=_child_env(UPLOAD_MAX_SIZE="77"),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Settings.model_validate_json(result.stdout).limits.max_size == 77


@pytest.mark.parametrize(
    ("name", "value"),
    [("UPLOAD_PORT", "abc"), ("UPLOAD_MAX_SIZE", "-5"), ("UPLOAD_DATABASE_URL", "mysql://x")],
)
def test_serve_with_an_invalid_setting_fails_fast_naming_it(
    clean_env: Path, name: str, value: str
) -> None:
    result = subprocess.run(
        [str(_script("upload-service")), "serve"],
        cwd=clean_env,
        env=_child_env(**{name: value}),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=False,
    )
    assert result.returncode == 2
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not (clean_env / "data").exists(), "nothing may be created before settings are valid"


def test_serve_refuses_the_file_locker_on_a_shared_postgres_database(clean_env: Path) -> None:
    result = subprocess.run(
        [str(_script("upload-service")), "serve"],
        cwd=clean_env,
        env=_child_env(UPLOAD_DATABASE_URL=PG_URL, UPLOAD_LOCKER="file"),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=False,
    )
    assert result.returncode == 2
    assert "UPLOAD_LOCKER=file locks uploads on one host only" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["0", "65", "two"])
def test_serve_refuses_a_bad_worker_count(
    clean_env: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--workers", workers])
    assert caught.value.code == 2
    assert "--workers: must be a whole number from 1 to 64" in capsys.readouterr().err
    assert not (clean_env / "data").exists()


# -- the schema -----------------------------------------------------------------------------------


async def test_the_app_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    app = create_app(settings, settle_heap=False)
    with pytest.raises(SchemaError, match="upload-service migrate"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on a database without a schema")


async def test_the_app_refuses_a_database_behind_head(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = f"sqlite+aiosqlite:///{data_dir / 'uploads.db'}"
    await anyio.to_thread.run_sync(upgrade, url)
    connection = sqlite3.connect(data_dir / "uploads.db")
    try:
        with connection:
            connection.execute("UPDATE alembic_version SET version_num = 'older'")
    finally:
        connection.close()
    app = create_app(make_settings(data_dir), settle_heap=False)
    with pytest.raises(SchemaError, match=r"at older, expected .*upload-service migrate"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on an outdated schema")


def test_the_schema_revision_the_code_expects_is_the_migrations_head() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_serving_does_not_import_alembic(clean_env: Path) -> None:
    """Alembic costs each worker process about 10 MiB; only migrating needs it."""
    probe = "import sys, upload_service.app, upload_service.cli; print('alembic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=True,
    )
    assert result.stdout.strip() == "False"


# What a service loads only when it is configured to use it (about 100 ms and 40 MiB together)
ON_DEMAND = ("boto3", "botocore", "asyncpg", "jwt", "cryptography", "httpx", "rich")
STARTED_PROBE = """
import asyncio, sys
from upload_service import cli
from upload_service.app import create_app
from upload_service.settings import load_settings

cli.parser()  # serve builds the whole parser, the client's commands too
app = create_app(load_settings())

async def main():
    async with app.router.lifespan_context(app):
        pass

asyncio.run(main())
print(" ".join(name for name in ON_DEMAND if name in sys.modules))
"""


@pytest.mark.parametrize(
    ("settings", "loaded"),
    [
        ({"UPLOAD_AUTH": "none"}, ""),
        # httpx imports rich itself (its command line's, when rich is installed)
        ({"UPLOAD_AUTH_JWT_SECRET": "s" * 32}, "cryptography jwt httpx rich"),
        (
            {
                "UPLOAD_AUTH": "none",
                "UPLOAD_HOOK_URL": "http://127.0.0.1:9/hook",
                "UPLOAD_HOOK_SECRET": "h" * 32,
            },
            "httpx rich",
        ),
    ],
    ids=["embedded-default", "jwt", "webhook"],
)
def test_a_started_service_loads_only_the_backends_it_is_configured_for(
    clean_env: Path, template_db: Path, settings: dict[str, str], loaded: str
) -> None:
    """boto3 (S3), asyncpg (PostgreSQL), PyJWT and cryptography (JWTs), httpx (JWKS, HTTP hooks,
    the client) and rich (the client) are imported only by what uses them."""
    shutil.copyfile(template_db, clean_env / "uploads.db")
    env = {
        **os.environ,
        **settings,
        "UPLOAD_DATA_DIR": str(clean_env),
        "UPLOAD_DATABASE_URL": f"sqlite+aiosqlite:///{clean_env / 'uploads.db'}",
    }
    probe = f"ON_DEMAND = {ON_DEMAND!r}\n{STARTED_PROBE}"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(loaded.split())


def test_models_and_migrations_agree(tmp_path: Path, template_db: Path) -> None:
    database = tmp_path / "uploads.db"
    shutil.copyfile(template_db, database)
    engine = create_sync_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert differences == []
    assert tables == {"uploads", "upload_parts", "outbox", "tickets", "alembic_version"}


def test_migrations_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    from alembic import command

    database = tmp_path / "uploads.db"
    url = f"sqlite+aiosqlite:///{database}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    connection = sqlite3.connect(database)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    assert "uploads" not in tables
    assert "outbox" not in tables
    upgrade(url)
    assert _revision(database) == head_revision()


# -- storage --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"UPLOAD_STORAGE": "s3"}, "UPLOAD_S3_BUCKET"),
        ({"UPLOAD_STORAGE": "gcs"}, "UPLOAD_STORAGE"),
        (
            {"UPLOAD_STORAGE": "s3", "UPLOAD_S3_BUCKET": "b", "UPLOAD_S3_PART_SIZE": "1048576"},
            "UPLOAD_S3_PART_SIZE",
        ),
        (
            {"UPLOAD_STORAGE": "s3", "UPLOAD_S3_BUCKET": "b", "UPLOAD_S3_PREFIX": "/abs"},
            "UPLOAD_S3_PREFIX",
        ),
        ({"UPLOAD_S3_CONCURRENCY": "0"}, "UPLOAD_S3_CONCURRENCY"),
        ({"UPLOAD_S3_ADDRESSING_STYLE": "dns"}, "UPLOAD_S3_ADDRESSING_STYLE"),
    ],
)
def test_storage_that_cannot_work_is_refused_at_start(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("max_size", "deferred_part_size"),
    [
        (None, 525 * 1024 * 1024),  # S3's 5 TiB in 10,000 parts
        (str(10 * 1024**3), 8 * 1024 * 1024),  # the default suffices
        (str(200 * 1024**3), 21 * 1024 * 1024),
        (str(6 * 1024**4), 525 * 1024 * 1024),  # never past S3's largest object
    ],
)
async def test_the_s3_store_is_built_from_the_settings(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, max_size: str | None, deferred_part_size: int
) -> None:
    monkeypatch.setenv("UPLOAD_STORAGE", "s3")
    monkeypatch.setenv("UPLOAD_S3_BUCKET", "videos")
    monkeypatch.setenv("UPLOAD_S3_PREFIX", "uploads/")
    monkeypatch.setenv("UPLOAD_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("UPLOAD_S3_CONCURRENCY", "3")
    if max_size is not None:
        monkeypatch.setenv("UPLOAD_MAX_SIZE", max_size)
    settings = load_settings()
    assert settings.s3.path_style  # a custom endpoint: path-style addressing
    store = await build_store(settings)
    try:
        assert isinstance(store, S3Store)
        assert (store.bucket, store.prefix, store.concurrency) == ("videos", "uploads/", 3)
        assert store.part_size == 8 * 1024 * 1024  # UPLOAD_S3_PART_SIZE's default
        # each upload's own: by its length, or for a deferred one by the largest allowed
        assert store.part_size_for(2 * 1024**3) == 8 * 1024 * 1024
        assert store.part_size_for(100 * 1024**3) == 11 * 1024 * 1024
        assert store.part_size_for(None) == deferred_part_size
        assert handler_config(settings).max_size == min(int(max_size or 5 * 1024**4), 5 * 1024**4)
        assert store.spool_dir == settings.storage.spool_dir
        assert settings.storage.spool_dir.is_dir()
    finally:
        await store.aclose()  # nothing was sent: the client connects on first use


def test_aws_itself_gets_virtual_hosted_addressing(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_STORAGE", "s3")
    monkeypatch.setenv("UPLOAD_S3_BUCKET", "videos")
    assert not load_settings().s3.path_style
    monkeypatch.setenv("UPLOAD_S3_ADDRESSING_STYLE", "path")
    assert load_settings().s3.path_style
