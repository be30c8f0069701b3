"""Round trips to PostgreSQL per tus request, counted at SQLAlchemy's connection: the statements
each request sends and the transactions they run in (each BEGIN and COMMIT is a round trip of
its own with asyncpg). The PostgreSQL locker's own connection adds one round trip to take an
upload's lock and one to let it go (``locking.postgres``). A PATCH commits what it received in
one transaction; the counts are kept few, and these tests say how few."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from tests.conftest import TUS, empty_database, make_settings
from tests.tus_http_helpers import BASE_URL, create
from tests.tus_http_helpers import head as head_upload
from tests.tus_http_helpers import patch as patch_upload
from upload_service.app import create_app

pytestmark = pytest.mark.anyio


@dataclass
class Count:
    statements: list[str] = field(default_factory=list)
    transactions: int = 0

    @property
    def writes(self) -> list[str]:
        return [s for s in self.statements if s.split(None, 1)[0] in ("INSERT", "UPDATE", "DELETE")]


@dataclass
class Counter:
    current: Count | None = None

    @contextmanager
    def counting(self) -> Iterator[Count]:
        self.current = Count()
        try:
            yield self.current
        finally:
            self.current = None


@pytest.fixture
def postgres_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return empty_database(request, "postgres", tmp_path)


@pytest.fixture
async def counted(
    postgres_database: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Counter]]:
    settings = make_settings(tmp_path, postgres_database)
    app = create_app(settings, settle_heap=False)
    counter = Counter()
    async with app.router.lifespan_context(app):
        engine = app.state.services.engine.sync_engine

        def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if counter.current is not None:
                counter.current.statements.append(" ".join(statement.split()))

        def on_begin(_conn: Any) -> None:
            if counter.current is not None:
                counter.current.transactions += 1

        event.listen(engine, "before_cursor_execute", on_statement)
        event.listen(engine, "begin", on_begin)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client, counter


async def test_round_trips_of_each_tus_request(
    counted: tuple[httpx.AsyncClient, Counter],
) -> None:
    client, counter = counted
    with counter.counting() as post:
        upload_id = await create(client, 8)
    with counter.counting() as patch:
        assert (await patch_upload(client, upload_id, 0, b"abcd")).status_code == 204
    with counter.counting() as head:
        assert (await head_upload(client, upload_id)).status_code == 200
    with counter.counting() as delete:
        assert (await client.delete(f"/files/{upload_id}", headers=TUS)).status_code == 204

    # POST: the insert of the upload (and its event, with hooks on) in one transaction
    assert post.transactions == 1
    assert len(post.statements) == 1
    # PATCH: the row claimed under the new lock's fencing token, then the one commit of what
    # arrived (the offset's compare-and-set and its event, if any) in one transaction
    assert patch.transactions == 2
    assert len(patch.writes) == 2
    assert sum(1 for s in patch.statements if "upload_offset=" in s.replace(" ", "")) >= 1
    # HEAD: the row read, then claimed under the lock (reconciliation: the upload is receiving)
    assert head.transactions == 2
    assert len(head.statements) == 2
    # DELETE: the row claimed under the lock, then terminated (with its event, if any)
    assert delete.transactions == 2
    assert len(delete.statements) == 2
