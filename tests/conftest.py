"""Shared fixtures: a per-test app on its own SQLite database and data directory, and a client.

The schema is built once per session by the real Alembic migrations into a template database,
which each test copies (a fresh file per test, migrations exercised, no per-test migration cost).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.postgres import (
    empty_tables,
    migrated_database,
)
from tests.s3 import moto_server, new_bucket
from tests.workers import run_lock
from upload_service.app import create_app
from upload_service.db.engine import create_engine, create_transactions
from upload_service.db.migrate import upgrade
from upload_service.db.repository import SqlUploadRepository
from upload_service.db.session import Transactions
from upload_service.services import Services
from upload_service.settings import Settings, load_settings

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No inherited ``UPLOAD_*`` variables and a working directory without a ``.env``."""
    for name in list(os.environ):
        if name.upper().startswith("UPLOAD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's moto S3 server (a separate process), started on first use."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The standard AWS variables, as a user sets them (moto accepts any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
async def bucket(moto_endpoint: str) -> str:
    return await anyio.to_thread.run_sync(new_bucket, moto_endpoint)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "uploads.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def sqlite_dir(tmp_path: Path, template_db: Path) -> Path:
    """A data directory holding a migrated SQLite database (a copy of the session's template):
    for tests of one process on the embedded default."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(template_db, data / "uploads.db")
    return data


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url or f"sqlite+aiosqlite:///{data_dir / 'uploads.db'}",
        "cors_origins": ("*",),
    }
    values.update(overrides)
    return load_settings(**values)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order of a run: the ``solo`` end-to-end tests first, then the tests that are not
    end-to-end, then the other end-to-end tests (each group in the order collected).

    pytest-xdist hands each worker consecutive runs of this order. The worker that starts with the
    solo tests holds their turn (``e2e_turn``) while the other works through the service tests,
    which need no turn; an e2e test sent meanwhile would wait for it."""

    def group(item: pytest.Item) -> int:
        if item.get_closest_marker("e2e") is None:
            return 1
        return 0 if item.get_closest_marker("solo") is not None else 2

    items.sort(key=group)


@pytest.fixture(autouse=True)
def e2e_turn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """End-to-end tests run side by side in the parallel workers, except those marked ``solo``:
    they run while no other end-to-end test does (a lock file of the run's workers, shared by the
    others, exclusive for these). A solo test asserts what a server answers right after an event
    (a broken connection), which a neighbour driving servers at full speed would delay, or shares
    the machine's one Docker engine."""
    if request.node.get_closest_marker("e2e") is None:
        yield
        return
    solo = request.node.get_closest_marker("solo") is not None
    with run_lock(tmp_path_factory, "e2e-turn", exclusive=solo):
        yield


DATABASE_KINDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The database a test runs on: the embedded default (SQLite) only, except the repository's
    contract suites (the ``databases`` fixture) and tests marked ``every_database`` (those that
    exist because of PostgreSQL: races it serialises, its locker), which run on both."""
    if "database_kind" not in metafunc.fixturenames:
        return
    both = "databases" in metafunc.fixturenames or any(
        True for _ in metafunc.definition.iter_markers("every_database")
    )
    metafunc.parametrize("database_kind", DATABASE_KINDS if both else ("sqlite",), scope="session")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """This session's PostgreSQL database, built by the real migrations, dropped at the end."""
    with migrated_database("suite") as url:
        yield url


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database_kind: str, tmp_path: Path) -> str:
    """A migrated, empty database for this test: a copy of the SQLite template in the test's data
    directory, or the session's PostgreSQL database with its tables emptied."""
    return empty_database(request, database_kind, tmp_path)


def empty_database(request: pytest.FixtureRequest, database_kind: str, tmp_path: Path) -> str:
    """``database_url`` of ``database_kind`` ("sqlite" or "postgres"), for a fixture that picks
    the kind itself (a contract suite parametrised over more backends than databases)."""
    if database_kind == "sqlite":
        template: Path = request.getfixturevalue("template_db")
        path = tmp_path / "data" / "uploads.db"
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    empty_tables(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    return url


class Databases:
    """Engines over one migrated database; a new engine is a restarted process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engines: list[AsyncEngine] = []
        self._transactions: list[Transactions] = []

    def engine(self) -> AsyncEngine:
        engine = create_engine(self.url)
        self._engines.append(engine)
        return engine

    def repository(self, *, events: bool = False) -> SqlUploadRepository:
        transactions = create_transactions(self.engine())
        self._transactions.append(transactions)
        return SqlUploadRepository(transactions, events=events)

    async def aclose(self) -> None:
        for transactions in self._transactions:
            await transactions.aclose()
        for engine in self._engines:
            await engine.dispose()


@pytest.fixture
async def databases(database_url: str) -> AsyncIterator[Databases]:
    result = Databases(database_url)
    try:
        yield result
    finally:
        await result.aclose()


@pytest.fixture
def data_dir(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "data"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def settings(data_dir: Path, database_url: str) -> Settings:
    return make_settings(data_dir, database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings, settle_heap=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def services(app: FastAPI) -> Services:
    result: Services = app.state.services
    return result


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
