"""Shared fixtures: a per-test app on its own SQLite database and data directory, and a client.

The schema is built once per session by the real Alembic migrations into a template database,
which each test copies (a fresh file per test, migrations exercised, no per-test migration cost).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from upload_service.app import create_app
from upload_service.db.engine import create_engine, create_sessionmaker
from upload_service.db.migrate import upgrade
from upload_service.db.repository import SqlUploadRepository
from upload_service.services import Services
from upload_service.settings import Settings

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "uploads.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": f"sqlite+aiosqlite:///{data_dir / 'uploads.db'}",
        "cors_origins": ("*",),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Databases:
    """Engines over one copied, migrated SQLite file; a new engine is a restarted process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engines: list[AsyncEngine] = []

    def engine(self) -> AsyncEngine:
        engine = create_engine(self.url)
        self._engines.append(engine)
        return engine

    def repository(self) -> SqlUploadRepository:
        return SqlUploadRepository(create_sessionmaker(self.engine()))

    async def aclose(self) -> None:
        for engine in self._engines:
            await engine.dispose()


@pytest.fixture
async def databases(tmp_path: Path, template_db: Path) -> AsyncIterator[Databases]:
    path = tmp_path / "uploads.db"
    shutil.copyfile(template_db, path)
    result = Databases(f"sqlite+aiosqlite:///{path}")
    try:
        yield result
    finally:
        await result.aclose()


@pytest.fixture
def data_dir(tmp_path: Path, template_db: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    shutil.copyfile(template_db, path / "uploads.db")
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
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
