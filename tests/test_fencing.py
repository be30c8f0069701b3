"""A request whose lock is lost mid-PATCH (the lock service dropped its session, as when the
replica's network is cut or PostgreSQL restarts) stops writing and commits nothing more, and a
newer request on another replica takes the upload over from the committed offset, intact."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg

from tests.conftest import Databases
from tests.test_contract_locker import postgres_dsn
from tests.test_handler import CONFIG, Clock, KiB, MiB, at, chunks, committed, create, offset_of
from upload_service.locking.postgres import PostgresLocker
from upload_service.storage.local.store import LocalStore
from upload_service.tus.handler import TusHandler
from upload_service.tus.request import TusRequest
from upload_service.tus.types import LeaseLost
from upload_service.uploads import UploadState

GUARD = 20.0
LENGTH = 3 * MiB


async def test_a_holder_that_lost_its_lock_stops_and_the_upload_goes_on_elsewhere(
    databases: Databases, tmp_path: Path
) -> None:
    dsn = await postgres_dsn()
    namespace = f"test_{uuid.uuid4().hex[:12]}"
    store = LocalStore(tmp_path / "files", buffer_size=64 * KiB)
    lockers = [PostgresLocker(dsn, namespace=namespace, poll=0.01) for _ in range(2)]
    first, second = (
        TusHandler(
            store=store,
            repository=databases.repository(),
            locker=locker,
            config=CONFIG,
            clock=Clock(),
        )
        for locker in lockers
    )
    data = bytes(range(256)) * (LENGTH // 256)
    checkpointed = anyio.Event()

    async def first_body() -> AsyncIterator[bytes]:
        sent = 0
        for start in range(0, LENGTH, 64 * KiB):
            if sent >= MiB + 128 * KiB:  # past one checkpoint (CONFIG: every MiB)
                checkpointed.set()
                await anyio.sleep_forever()  # the client stalls; the lock is lost meanwhile
            yield data[start : start + 64 * KiB]
            sent += 64 * KiB

    try:
        upload_id = await create(first, LENGTH)
        outcome: list[BaseException] = []

        async def first_patch() -> None:
            try:
                await first.patch(TusRequest(upload_id, at(0)), first_body())
            except LeaseLost as exc:
                outcome.append(exc)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(first_patch)
                await checkpointed.wait()
                connection = lockers[0]._connection
                assert connection is not None
                admin = await asyncpg.connect(dsn)
                try:  # the lock service drops the holder's session
                    await admin.execute(
                        "SELECT pg_terminate_backend($1)", connection.get_server_pid()
                    )
                finally:
                    await admin.close()
        assert len(outcome) == 1, "the stale holder must answer that it lost its lock"
        upload = await committed(databases.repository(), upload_id)
        assert upload.offset == MiB  # the checkpoint before the loss, nothing after
        assert upload.state is UploadState.RECEIVING
        resumed = await second.patch(
            TusRequest(upload_id, at(upload.offset)), chunks(data[upload.offset :], 64 * KiB)
        )
        assert offset_of(resumed) == LENGTH
        done = await committed(databases.repository(), upload_id)
        assert done.state is UploadState.READY
        assert done.sha256 == hashlib.sha256(data).hexdigest()
        assert done.fence > upload.fence  # the newer holder claimed it with a newer token
        stored = b"".join([piece async for piece in store.read(done.storage, 0, LENGTH)])
        assert stored == data
    finally:
        for locker in lockers:
            await locker.aclose()
        await store.aclose()
