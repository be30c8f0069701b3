"""Background work runs once across processes and replicas, not once per replica.

Two handlers over one database and one store, each with a locker of its own on the same lock
service, stand for two replicas: clean-up and start-up reconciliation take a lock of their own
(the second replica skips), and a verification holds its upload's lock (a file is hashed once).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from tests.conftest import Databases
from tests.test_contract_locker import postgres_dsn
from tests.test_handler import CONFIG, Clock, at, chunks, create
from upload_service.lifecycle import CLEANUP_LOCK, RECONCILE_LOCK
from upload_service.locking.base import Locker
from upload_service.locking.file import FileLocker
from upload_service.locking.postgres import PostgresLocker
from upload_service.storage.base import Hasher, StorageKey
from upload_service.storage.memory import MemoryStore
from upload_service.tasks import TaskRunner
from upload_service.tus.handler import TusHandler
from upload_service.tus.request import TusRequest
from upload_service.uploads import UploadState

GUARD = 20.0


class CountingStore(MemoryStore):
    """Counts whole-file digests, and holds each until released."""

    def __init__(self) -> None:
        super().__init__()
        self.digests = 0
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        self.digests += 1
        self.started.set()
        await self.release.wait()
        return await super().digest(key, hasher)


@dataclass
class Replica:
    handler: TusHandler
    locker: Locker
    runner: TaskRunner


@pytest.fixture(params=["file", "postgres"])
async def lockers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Locker]]:
    made: list[Locker] = []
    namespace = f"test_{uuid.uuid4().hex[:12]}"  # both replicas' lockers share it
    for _ in range(2):
        if request.param == "file":
            made.append(FileLocker(tmp_path / "locks", poll=0.005, watch=0.01))
        else:
            made.append(
                PostgresLocker(await postgres_dsn(), namespace=namespace, poll=0.01, heartbeat=0.05)
            )
    try:
        yield made
    finally:
        for locker in made:
            await locker.aclose()


@pytest.fixture
async def replicas(
    databases: Databases, lockers: list[Locker]
) -> AsyncIterator[tuple[CountingStore, Sequence[Replica]]]:
    store = CountingStore()
    clock = Clock()
    made = []
    async with anyio.create_task_group() as group:
        for locker in lockers:
            runner = TaskRunner()
            await group.start(_run, runner)
            handler = TusHandler(
                store=store,
                repository=databases.repository(),
                locker=locker,
                config=CONFIG,
                clock=clock,
                runner=runner,
            )
            made.append(Replica(handler, locker, runner))
        yield store, made
        group.cancel_scope.cancel()


async def _run(runner: TaskRunner, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    async with runner.running():
        task_status.started()
        await anyio.sleep_forever()


async def test_clean_up_is_skipped_while_another_replica_runs_it(
    replicas: tuple[CountingStore, Sequence[Replica]],
) -> None:
    _, (first, second) = replicas
    upload_id = await create(first.handler, 10)
    first.handler.lifecycle._clock = second.handler.lifecycle._clock = lambda: (
        first.handler._clock() + timedelta(days=365)
    )
    async with first.locker.lock(CLEANUP_LOCK, wait=GUARD, preempt=False):
        assert await second.handler.lifecycle.expire() == 0  # skipped: nothing touched
        upload = await second.handler.get(TusRequest(upload_id))
        assert upload.state is UploadState.RECEIVING
    assert await second.handler.lifecycle.expire() == 1
    assert (await second.handler.get(TusRequest(upload_id))).state is UploadState.EXPIRED


async def test_start_up_reconciliation_is_skipped_while_another_replica_runs_it(
    replicas: tuple[CountingStore, Sequence[Replica]],
) -> None:
    store, (first, second) = replicas
    upload_id = await create(first.handler, 100)
    await first.handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456789"))
    key = (await first.handler.get(TusRequest(upload_id))).storage
    appender = await store.append(key, 10)
    await appender.write(b"never committed")
    await appender.sync()
    async with first.locker.lock(RECONCILE_LOCK, wait=GUARD, preempt=False):
        assert await second.handler.reconcile_all() == 0
        assert await store.size(key) == 25
    assert await second.handler.reconcile_all() == 1
    assert await store.size(key) == 10


async def test_a_verification_both_replicas_resume_hashes_the_file_once(
    replicas: tuple[CountingStore, Sequence[Replica]],
) -> None:
    store, (first, second) = replicas
    upload_id = await create(first.handler, 6)
    await first.handler.patch(TusRequest(upload_id, at(0)), chunks(b"abc"))
    first.handler._digests.drop(upload_id)  # the running digest is lost: the file is read back
    await first.handler.patch(TusRequest(upload_id, at(3)), chunks(b"def"))
    with anyio.fail_after(GUARD):
        await store.started.wait()
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            await second.handler.lifecycle.resume()  # the other replica starts, resumes it too
            group.start_soon(second.handler.lifecycle.verify, upload_id)  # and runs it itself
            await anyio.sleep(
                0.05
            )  # lets both waiters queue for the lock (no effect on the result)
            store.release.set()
        await first.runner.wait_idle()
        await second.runner.wait_idle()
    upload = await first.handler.get(TusRequest(upload_id))
    assert (upload.state, upload.sha256) == (
        UploadState.READY,
        hashlib.sha256(b"abcdef").hexdigest(),
    )
    assert store.digests == 1
