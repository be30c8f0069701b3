"""Scenario 12, ``rows`` (our server only): what a big uploads table costs a request.

Each repetition starts the server twice: on an empty database, and on one that already holds
``Config.rows`` finished uploads (1,000,000 in a full run), created over the past year. On each,
``ROW_UPLOADS`` uploads are created through the API (receiving, nothing sent yet), then, on one
keep-alive connection:

- ``Config.rows_heads`` HEADs, round robin over those uploads (after ``WARM`` not counted);
- ``Config.rows_pages`` times the first page of ``GET /api/uploads`` (50 uploads, newest first);
- as many pages deep in the table: ``created_before`` the middle of the year, then its
  ``next_cursor``, alternately (the same query twice would measure a cache).

The rows are built once and cached, keyed by the schema (the migrations' names and sizes) and the
count: SQLite as a database file in ``<cache>/rows/`` copied into each measurement's data
directory; PostgreSQL as a template database (``upload_rowscache_...``, left on the server on
purpose, outside ``pg.PREFIX``) that each measurement's database is created from. The rows are
written by SQLAlchemy with the service's own table, so their format is the service's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import pg
from bench.client import TUS, ClientError, Connection, Reply, create
from bench.scenarios import Context, Measured, _percentile
from bench.servers import Launch, RunningServer

REPO = Path(__file__).resolve().parent.parent
ROW_UPLOADS = 100
WARM = 200
BATCH = 10_000
SPAN = timedelta(days=365)
TEMPLATE_PREFIX = "upload_rowscache_"  # not pg.PREFIX: left on the server on purpose


def _schema_key(count: int) -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "migrations" / "versions").glob("*.py")):
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return f"{digest.hexdigest()[:12]}_{count}"


def _rows(count: int, now: datetime) -> Iterator[list[dict[str, object]]]:
    """The rows in batches: finished uploads of 1 MiB, oldest first, spread over ``SPAN``."""
    step = SPAN / max(count, 1)
    start = now - SPAN
    for first in range(0, count, BATCH):
        batch = []
        for n in range(first, min(first + BATCH, count)):
            created = start + step * n
            batch.append(
                {
                    "id": f"{n:032x}",
                    "length": 1 << 20,
                    "upload_offset": 1 << 20,
                    "received": 1 << 20,
                    "state": "ready",
                    "metadata_json": {"filename": "Ym9vay5tcDQ="},
                    "created_at": created,
                    "updated_at": created,
                    "completed_at": created,
                    "state_changed_at": now,  # not due for clean-up
                    "sha256": "0" * 64,
                    "storage_ref": "",
                    "fence": 0,
                }
            )
        yield batch


async def _fill(url: str, count: int) -> None:
    from sqlalchemy import insert, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from upload_service.db.models import UploadRow

    engine = create_async_engine(url)
    try:
        for batch in _rows(count, datetime.now(UTC)):
            async with engine.begin() as conn:
                await conn.execute(insert(UploadRow), batch)
        if url.startswith("postgresql"):
            async with engine.connect() as conn:
                await conn.execute(text("ANALYZE uploads"))
                await conn.commit()
    finally:
        await engine.dispose()


def _migrated(launch: Launch, env: dict[str, str], data_dir: Path) -> None:
    """Start the server once on ``data_dir`` (it migrates the empty database), then stop it."""
    server = launch.start(env=env, data_dir=data_dir)
    server.stop()


def _sqlite_rows(ctx: Context, launch: Launch) -> Path:
    cache = ctx.cache / "rows"
    target = cache / f"sqlite_{_schema_key(ctx.config.rows)}.db"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=launch.workdir, prefix="rows-build-") as d:
        data_dir = Path(d)
        _migrated(launch, {}, data_dir)
        database = data_dir / "uploads.db"
        asyncio.run(_fill(f"sqlite+aiosqlite:///{database}", ctx.config.rows))
        partial = target.with_suffix(".partial")
        shutil.copyfile(database, partial)
        partial.rename(target)
    return target


def template_name(count: int) -> str:
    """The PostgreSQL template database of ``count`` rows of this checkout's schema."""
    return f"{TEMPLATE_PREFIX}{_schema_key(count)}"


def _pg_template(ctx: Context, launch: Launch) -> str:
    name = template_name(ctx.config.rows)
    admin = ctx.pg_url
    if pg.exists(admin, name):
        return name
    building = f"{name}_partial"
    pg.recreate(admin, building)
    with tempfile.TemporaryDirectory(dir=launch.workdir, prefix="rows-build-") as d:
        build_url = pg.server_url(admin, building)
        _migrated(launch, {"UPLOAD_DATABASE_URL": build_url}, Path(d))
        asyncio.run(_fill(build_url, ctx.config.rows))
    pg.rename(admin, building, name)
    return name


def _started(ctx: Context, launch: Launch, data_dir: Path, *, full: bool) -> RunningServer:
    if full and "UPLOAD_DATABASE_URL" in launch.env:
        name = pg.database_name(launch.env["UPLOAD_DATABASE_URL"])
        pg.recreate(ctx.pg_url, name, template=_pg_template(ctx, launch))
    elif full:
        shutil.copyfile(_sqlite_rows(ctx, launch), data_dir / "uploads.db")
    return launch.start(data_dir=data_dir)


def _timed(conn: Connection, method: str, path: str) -> tuple[float, Reply]:
    began = time.perf_counter()
    reply = conn.request(method, path, TUS)
    return time.perf_counter() - began, reply


def _get(conn: Connection, path: str) -> tuple[float, dict[str, Any]]:
    seconds, reply = _timed(conn, "GET", path)
    if reply.status != 200:
        raise ClientError(f"GET {path} answered {reply.status} {reply.body[:200]!r}")
    page: dict[str, Any] = json.loads(reply.body)
    return seconds, page


def _measure(server: RunningServer, ctx: Context) -> dict[str, float]:
    with Connection(server.base_url, ctx.config.request_timeout) as conn:
        paths = [create(conn, server.spec.files_path, 1 << 20) for _ in range(ROW_UPLOADS)]
        heads = []
        heads_count, pages = ctx.config.rows_heads, ctx.config.rows_pages
        for n in range(WARM + heads_count):
            seconds, reply = _timed(conn, "HEAD", paths[n % len(paths)])
            if reply.status != 200 or reply.headers.get("upload-offset") != "0":
                raise ClientError(f"HEAD answered {reply.status} {reply.headers}")
            if n >= WARM:
                heads.append(seconds * 1000)
        first = [_get(conn, "/api/uploads?limit=50")[0] * 1000 for _ in range(pages)]
        middle = (datetime.now(UTC) - SPAN / 2).strftime("%Y-%m-%dT%H:%M:%S")
        deep_path = f"/api/uploads?limit=50&created_before={quote(middle)}"
        deep = []
        cursor: str | None = None
        for n in range(pages):
            if n % 2 == 0 or cursor is None:
                seconds, page = _get(conn, deep_path)
            else:
                seconds, page = _get(conn, f"{deep_path}&cursor={quote(cursor)}")
            cursor = page.get("next_cursor")
            deep.append(seconds * 1000)
    return {
        "head_p50": statistics.median(heads),
        "head_p99": _percentile(heads, 0.99),
        "first_p99": _percentile(first, 0.99),
        "deep_p99": _percentile(deep, 0.99),
    }


def rows(ctx: Context, launch: Launch) -> Measured:
    results: dict[str, dict[str, float]] = {}
    for full in (False, True):
        with tempfile.TemporaryDirectory(dir=launch.workdir, prefix="rows-") as d:
            server = _started(ctx, launch, Path(d), full=full)
            try:
                results["full" if full else "empty"] = _measure(server, ctx)
            finally:
                server.stop()
    empty, full_table = results["empty"], results["full"]
    return Measured(
        {
            "rows.head_empty": empty["head_p99"],
            "rows.head": full_table["head_p99"],
            "rows.head_ratio": full_table["head_p99"] / empty["head_p99"],
            "rows.first_page": full_table["first_p99"],
            "rows.deep_page": full_table["deep_p99"],
        },
        {
            "rows": ctx.config.rows,
            "head_p50_empty_ms": round(empty["head_p50"], 3),
            "head_p50_ms": round(full_table["head_p50"], 3),
            "first_page_p99_empty_ms": round(empty["first_p99"], 3),
            "deep_page_p99_empty_ms": round(empty["deep_p99"], 3),
        },
    )
