"""Migrations carry existing uploads along, on SQLite and on PostgreSQL: rows written at an older
revision read back the same after ``upgrade``, and ``downgrade`` gives the old rows back."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.to_thread
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.postgres import (
    create_database,
    drop_database,
    new_database_name,
    require_postgres,
    sqlalchemy_url,
)
from upload_service.db.engine import create_transactions
from upload_service.db.migrate import alembic_config, upgrade
from upload_service.db.repository import SqlUploadRepository
from upload_service.uploads import UploadState

ID = "0123456789abcdef0123456789abcdef"
HEADER = f"filename {base64.b64encode('holiday ünïcode.mp4'.encode()).decode()},flag,empty "
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'uploads.db'}"
        return
    require_postgres()
    name = new_database_name("migrations")
    create_database(name)
    try:
        yield sqlalchemy_url(name)
    finally:
        drop_database(name)


async def _execute(url: str, statement: str, **values: object) -> list[tuple[object, ...]]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(statement), values)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def test_metadata_written_at_0002_reads_back_the_same_and_downgrades(
    empty_database: str,
) -> None:
    url = empty_database
    await anyio.to_thread.run_sync(upgrade, url, "0002")
    await _execute(
        url,
        "INSERT INTO uploads (id, length, upload_offset, received, state, metadata_header,"
        " created_at, updated_at) VALUES (:id, 10, 3, 3, 'receiving', :header, :now, :now)",
        id=ID,
        header=HEADER,
        now=NOW,
    )
    await anyio.to_thread.run_sync(upgrade, url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        upload = await SqlUploadRepository(create_transactions(engine)).get(ID)
    finally:
        await engine.dispose()
    assert upload is not None
    assert upload.metadata == {
        "filename": "holiday ünïcode.mp4".encode(),
        "flag": None,
        "empty": None,
    }
    assert (upload.offset, upload.storage_ref, upload.fence) == (3, "", 0)

    await anyio.to_thread.run_sync(command.downgrade, alembic_config(url), "0002")
    rows = await _execute(url, "SELECT metadata_header FROM uploads WHERE id = :id", id=ID)
    assert rows == [(HEADER.strip(),)]


async def test_uploads_of_0003_have_no_owner_and_the_owner_downgrades_away(
    empty_database: str,
) -> None:
    url = empty_database
    await anyio.to_thread.run_sync(upgrade, url, "0003")
    await _execute(
        url,
        "INSERT INTO uploads (id, length, upload_offset, received, state, metadata_json,"
        " created_at, updated_at) VALUES (:id, 10, 3, 3, 'receiving', '{}', :now, :now)",
        id=ID,
        now=NOW,
    )
    await anyio.to_thread.run_sync(upgrade, url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        upload = await SqlUploadRepository(create_transactions(engine)).get(ID)
    finally:
        await engine.dispose()
    assert upload is not None
    assert (upload.offset, upload.owner) == (3, None)

    await anyio.to_thread.run_sync(command.downgrade, alembic_config(url), "0003")
    rows = await _execute(url, "SELECT id, upload_offset FROM uploads")
    assert rows == [(ID, 3)]


async def test_owners_of_0006_are_namespaced_by_the_credentials_configured_and_downgrade_back(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner named by a configured API key becomes ``key:NAME``; every other owner was a JWT's
    ``sub`` and becomes ``jwt:ISS:SUB`` with the configured issuer; events still in the outbox
    say the same."""
    url = empty_database
    await anyio.to_thread.run_sync(upgrade, url, "0006")
    owners = {"1" * 32: "svc", "2" * 32: "alice", "3" * 32: None}
    for upload_id, owner in owners.items():
        await _execute(
            url,
            "INSERT INTO uploads (id, length, upload_offset, received, state, metadata_json,"
            " created_at, updated_at, owner) VALUES (:id, 10, 3, 3, 'receiving', '{}', :now,"
            " :now, :owner)",
            id=upload_id,
            now=NOW,
            owner=owner,
        )
    payload = '{"id": "%s", "owner": "svc"}' % ("1" * 32)
    await _execute(
        url,
        "INSERT INTO outbox (id, type, upload_id, payload, created_at, status, attempts,"
        " next_attempt_at) VALUES (:id, 'post-create', :upload, :payload, :now, 'pending', 0,"
        " :now)",
        id="e" * 32,
        upload="1" * 32,
        payload=payload,
        now=NOW,
    )
    monkeypatch.setenv("UPLOAD_AUTH_API_KEYS", f"svc:{'ab' * 32}")
    monkeypatch.setenv("UPLOAD_AUTH_JWT_ISSUER", "https://issuer.test")
    monkeypatch.setenv("UPLOAD_AUTH_SIGNING_KEY", "k" * 32)
    await anyio.to_thread.run_sync(upgrade, url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        repository = SqlUploadRepository(create_transactions(engine))
        found = await repository.get_many(tuple(owners))
        (event,) = await repository.events_of("1" * 32)
    finally:
        await engine.dispose()
    assert {upload_id: upload.owner for upload_id, upload in found.items()} == {
        "1" * 32: "key:svc",
        "2" * 32: "jwt:https%3A//issuer.test:alice",
        "3" * 32: None,
    }
    assert event.upload["owner"] == "key:svc"
    assert found["1" * 32].size_cap is None

    await anyio.to_thread.run_sync(command.downgrade, alembic_config(url), "0006")
    rows = await _execute(url, "SELECT id, owner FROM uploads ORDER BY id")
    assert rows == [(upload_id, owner) for upload_id, owner in owners.items()]


async def test_parts_of_0006_finals_move_to_upload_parts_and_downgrade_back(
    empty_database: str,
) -> None:
    """Finals written at 0006 (a partial named its one final in ``final_id``) keep their parts
    as ``upload_parts`` rows; after the upgrade a part may join another final, and the downgrade
    names the most recent live final of each part in ``final_id`` again."""
    url = empty_database
    await anyio.to_thread.run_sync(upgrade, url, "0006")
    a, b, c, d, e = (letter * 32 for letter in "abcde")
    assembled, waiting, abandoned = "1" * 32, "2" * 32, "3" * 32
    rows = [
        # id, state, concat, parts, final_id
        (a, "ready", "partial", None, assembled),
        (b, "ready", "partial", None, assembled),
        (c, "receiving", "partial", None, waiting),
        (d, "ready", "partial", None, None),  # its final was deleted unassembled: released
        (e, "ready", "partial", None, None),
        (assembled, "ready", "final", f"{a} {b}", None),
        (waiting, "receiving", "final", c, None),
        (abandoned, "terminated", "final", d, None),
    ]
    for upload_id, state, concat, parts, final_id in rows:
        await _execute(
            url,
            "INSERT INTO uploads (id, length, upload_offset, received, state, metadata_json,"
            " created_at, updated_at, concat, parts, final_id)"
            " VALUES (:id, 4, 4, 4, :state, '{}', :now, :now, :concat, :parts, :final_id)",
            id=upload_id,
            state=state,
            now=NOW,
            concat=concat,
            parts=parts,
            final_id=final_id,
        )
    await anyio.to_thread.run_sync(upgrade, url)
    recorded = await _execute(url, "SELECT final_id, position, part_id FROM upload_parts")
    assert sorted(recorded) == sorted(
        [(assembled, 0, a), (assembled, 1, b), (waiting, 0, c), (abandoned, 0, d)]
    )
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        repository = SqlUploadRepository(create_transactions(engine))
        found = await repository.get_many((a, b, c, d, e))
        assert {part: upload.finals for part, upload in found.items()} == {
            a: (assembled,),
            b: (assembled,),
            c: (waiting,),
            d: (),  # its final ended
            e: (),
        }
        earlier = await repository.get(assembled)
        assert earlier is not None
        later = replace(
            earlier,
            id="4" * 32,
            parts=(c, a),
            state=UploadState.RECEIVING,
            created_at=NOW + timedelta(hours=1),
        )
        await repository.add_final(later)  # a and c now form a second final each
        assert (await repository.get(a)) == replace(found[a], finals=(assembled, later.id))
    finally:
        await engine.dispose()

    await anyio.to_thread.run_sync(command.downgrade, alembic_config(url), "0006")
    named = await _execute(url, "SELECT id, final_id FROM uploads WHERE concat = 'partial'")
    assert sorted(named) == sorted(
        [(a, later.id), (b, assembled), (c, later.id), (d, None), (e, None)]
    )
