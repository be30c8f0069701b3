"""The tus handler over an in-memory store, the in-memory repository and a MemoryLocker: protocol
rules, run once, with no database. The kill test restarts over what survived, so it runs on the
SQL repository (SQLite and PostgreSQL), whose rows outlive the process.

The centre is the crash story: offsets move only by compare-and-set after the store made the bytes
durable, so after a kill at any point, reconciliation reports an offset that never exceeds the
durable bytes and never falls below what was committed.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import anyio
import anyio.lowlevel
import pytest

from tests.conftest import Databases
from upload_service.db.base import Quota, UploadRepository
from upload_service.db.memory import MemoryUploadRepository
from upload_service.db.repository import SqlUploadRepository
from upload_service.errors import (
    ClientGone,
    Conflict,
    Gone,
    NotFound,
    OffsetMismatch,
    StorageError,
    StorageFull,
    TooLarge,
    Unavailable,
)
from upload_service.locking.memory import MemoryLocker
from upload_service.storage.base import Appender, Fence, Hasher, StorageKey
from upload_service.storage.memory import MemoryStore
from upload_service.tus.checksum import ChecksumMismatch
from upload_service.tus.handler import TusHandler
from upload_service.tus.protocol import OFFSET_CONTENT_TYPE, http_date
from upload_service.tus.request import TusHeaders, TusRequest
from upload_service.tus.types import HandlerConfig, TusResponse
from upload_service.uploads import Upload, UploadState

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
GUARD = 20.0  # deadlock guard for tests that coordinate tasks; nothing here waits on time

# Checkpoints and progress writes by bytes alone, so nothing depends on how fast the test runs.
CONFIG = HandlerConfig(
    expire_after=3600,
    checkpoint_bytes=MiB,
    checkpoint_seconds=1e9,
    progress_seconds=1e9,
    lock_timeout=GUARD,
)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    store: MemoryStore
    repository: UploadRepository
    locker: MemoryLocker
    clock: Clock
    handler: TusHandler


def make_world(
    config: HandlerConfig = CONFIG,
    *,
    store: MemoryStore | None = None,
    clock: Clock | None = None,
    repository: UploadRepository | None = None,
) -> World:
    memory = store if store is not None else MemoryStore()
    repository = repository if repository is not None else MemoryUploadRepository()
    locker = MemoryLocker()
    now = clock if clock is not None else Clock()
    handler = TusHandler(
        store=memory, repository=repository, locker=locker, config=config, clock=now
    )
    return World(memory, repository, locker, now, handler)


@pytest.fixture
def world() -> World:
    return make_world()


# -- helpers --------------------------------------------------------------------------------------


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def tus(**values: str) -> TusHeaders:
    return TusHeaders(tus_resumable="1.0.0", **values)


def at(offset: int) -> TusHeaders:
    return tus(content_type=OFFSET_CONTENT_TYPE, upload_offset=str(offset))


async def empty() -> AsyncIterator[bytes]:
    nothing: tuple[bytes, ...] = ()
    for piece in nothing:
        yield piece


async def chunks(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def pieces(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def create(handler: TusHandler, length: int | None) -> str:
    values = {"upload_length": str(length)} if length is not None else {"upload_defer_length": "1"}
    response = await handler.create(TusRequest(headers=tus(**values)), empty())
    assert response.status == 201
    assert response.upload_id is not None
    return response.upload_id


async def committed(repository: UploadRepository, upload_id: str) -> Upload:
    upload = await repository.get(upload_id)
    assert upload is not None
    return upload


async def key_of(world: World, upload_id: str) -> StorageKey:
    """The storage key the upload's row keeps: what the store's ``create`` returned."""
    return (await committed(world.repository, upload_id)).storage


def offset_of(response: TusResponse) -> int:
    return int(response.headers["Upload-Offset"])


# -- appending ------------------------------------------------------------------------------------


async def test_patch_stores_durably_and_completes(world: World) -> None:
    data = payload(3 * CHUNK + 5)
    upload_id = await create(world.handler, len(data))
    response = await world.handler.patch(TusRequest(upload_id, at(0)), chunks(data))
    assert response.status == 204
    assert offset_of(response) == len(data)
    upload = await committed(world.repository, upload_id)
    assert upload.offset == len(data)
    assert upload.state is UploadState.READY
    assert upload.completed_at == T0
    assert upload.expires_at is None
    assert bytes(world.store.durable[upload_id]) == data


async def test_client_gone_midway_commits_exactly_the_durable_bytes(world: World) -> None:
    data = payload(10 * CHUNK)
    upload_id = await create(world.handler, len(data))

    async def vanishing() -> AsyncIterator[bytes]:
        for piece in list(pieces(data))[:5]:
            yield piece
        yield data[5 * CHUNK : 5 * CHUNK + 100]  # part of a network read, then the reset
        raise ClientGone

    response = await world.handler.patch(TusRequest(upload_id, at(0)), vanishing())
    received = 5 * CHUNK + 100
    assert offset_of(response) == received
    assert (await committed(world.repository, upload_id)).offset == received
    assert bytes(world.store.durable[upload_id]) == data[:received]
    world.store.crash()  # what was committed survives a crash right after the response
    assert await world.store.size(await key_of(world, upload_id)) == received
    assert not world.locker.held(upload_id)

    resumed = await world.handler.patch(
        TusRequest(upload_id, at(received)), chunks(data[received:])
    )
    assert offset_of(resumed) == len(data)
    assert bytes(world.store.durable[upload_id]) == data


async def test_checkpoints_commit_the_offset_every_checkpoint_bytes(world: World) -> None:
    data = payload(3 * MiB + MiB // 2)  # 56 chunks of 64 KiB; checkpoint_bytes is 1 MiB
    upload_id = await create(world.handler, 4 * MiB)
    seen: list[tuple[int, int]] = []

    async def observed() -> AsyncIterator[bytes]:
        for piece in pieces(data):
            upload = await committed(world.repository, upload_id)
            seen.append((upload.offset, len(world.store.durable[upload_id])))
            yield piece

    response = await world.handler.patch(TusRequest(upload_id, at(0)), observed())
    per_checkpoint = MiB // CHUNK
    # Before chunk i, the checkpoints after chunks 16, 32 and 48 have been fsynced and committed.
    assert seen == [((i // per_checkpoint) * MiB,) * 2 for i in range(len(seen))]
    assert len(seen) == 56
    assert offset_of(response) == len(data)
    assert (await committed(world.repository, upload_id)).offset == len(data)


async def test_progress_is_visible_before_bytes_are_committed() -> None:
    config = replace(CONFIG, checkpoint_bytes=100 * MiB, progress_seconds=0)
    world = make_world(config)
    data = payload(8 * CHUNK)
    upload_id = await create(world.handler, len(data) * 2)
    seen: list[tuple[int, int]] = []

    async def observed() -> AsyncIterator[bytes]:
        for piece in pieces(data):
            upload = await committed(world.repository, upload_id)
            seen.append((upload.offset, upload.received))
            yield piece

    await world.handler.patch(TusRequest(upload_id, at(0)), observed())
    assert seen == [(0, i * CHUNK) for i in range(8)]
    upload = await committed(world.repository, upload_id)
    assert (upload.offset, upload.received) == (len(data), len(data))


async def test_storage_error_commits_the_good_prefix_then_raises(world: World) -> None:
    data = payload(6 * CHUNK)
    upload_id = await create(world.handler, len(data))

    async def failing_disk() -> AsyncIterator[bytes]:
        for number, piece in enumerate(pieces(data)):
            if number == 3:
                world.store.fail_writes = True
            yield piece

    with pytest.raises(StorageError, match="storage is full"):
        await world.handler.patch(TusRequest(upload_id, at(0)), failing_disk())
    assert (await committed(world.repository, upload_id)).offset == 3 * CHUNK
    assert bytes(world.store.durable[upload_id]) == data[: 3 * CHUNK]
    assert not world.locker.held(upload_id)

    world.store.fail_writes = False
    head = await world.handler.head(TusRequest(upload_id, tus()))
    assert offset_of(head) == 3 * CHUNK
    resumed = await world.handler.patch(
        TusRequest(upload_id, at(3 * CHUNK)), chunks(data[3 * CHUNK :])
    )
    assert offset_of(resumed) == len(data)
    assert bytes(world.store.durable[upload_id]) == data


class BufferingAppender:
    """Like a disk store: accepted bytes wait in a buffer until ``sync``; a failing flush loses
    them while ``offset`` still counts them (it counts what was accepted, not what is durable)."""

    def __init__(self, inner: Appender, store: BufferingStore) -> None:
        self._inner = inner
        self._store = store
        self._buffer = bytearray()
        self._dropped = 0

    @property
    def offset(self) -> int:
        return self._inner.offset + self._dropped + len(self._buffer)

    async def write(self, data: bytes) -> None:
        self._buffer += data

    async def settle(self) -> None:
        pending, self._buffer = self._buffer, bytearray()
        if pending and self._store.fail_flush:
            kept = len(pending) // 2  # the OS took part of the write, then the disk filled up
            await self._inner.write(bytes(pending[:kept]))
            self._dropped += len(pending) - kept
            raise StorageError("cannot write upload data: storage is full")
        await self._inner.write(bytes(pending))

    async def sync(self) -> int:
        await self.settle()
        if self._store.fail_fsync:
            raise StorageError("cannot make upload data durable: Input/output error")
        return await self._inner.sync()

    async def aclose(self) -> None:
        await self._inner.aclose()


class BufferingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_flush = False
        self.fail_fsync = False

    async def append(  # type: ignore[override]
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> BufferingAppender:
        return BufferingAppender(await super().append(key, offset, hashers, fence), self)


@pytest.mark.parametrize(
    ("failure", "sent", "durable"),
    [
        # The second checkpoint (after 32 chunks) fails halfway through its 16 chunks.
        ("fail_flush", 40, MiB + 8 * CHUNK),
        # The body ends after 30 chunks; the final sync fails halfway through 14 chunks.
        ("fail_flush", 30, MiB + 7 * CHUNK),
        ("fail_fsync", 40, MiB),
        ("fail_fsync", 30, MiB),
    ],
)
async def test_a_failed_sync_commits_only_what_is_durable(
    failure: str, sent: int, durable: int
) -> None:
    store = BufferingStore()
    world = make_world(store=store)
    data = payload(40 * CHUNK)
    upload_id = await create(world.handler, len(data))

    async def failing_disk() -> AsyncIterator[bytes]:
        for number, piece in enumerate(pieces(data[: sent * CHUNK])):
            if number == 20:  # after the first checkpoint (16 chunks), before the second
                setattr(store, failure, True)
            yield piece

    with pytest.raises(StorageError):
        await world.handler.patch(TusRequest(upload_id, at(0)), failing_disk())
    upload = await committed(world.repository, upload_id)
    assert upload.offset == durable
    assert bytes(store.durable[upload_id])[:durable] == data[:durable]
    assert len(store.durable[upload_id]) >= durable
    assert not world.locker.held(upload_id)

    setattr(store, failure, False)
    resumed = await world.handler.patch(TusRequest(upload_id, at(durable)), chunks(data[durable:]))
    assert offset_of(resumed) == len(data)
    assert bytes(store.durable[upload_id]) == data


async def test_a_body_longer_than_the_upload_commits_what_fits_then_raises(world: World) -> None:
    upload_id = await create(world.handler, 10)
    with pytest.raises(TooLarge):
        await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456789abcde"))
    upload = await committed(world.repository, upload_id)
    assert upload.offset == 10
    assert upload.state is not UploadState.RECEIVING
    assert bytes(world.store.durable[upload_id]) == b"0123456789"


async def test_a_wrong_offset_is_rejected_before_the_body_is_read(world: World) -> None:
    upload_id = await create(world.handler, 100)
    await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"12345"))
    started = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal started
        started = True
        yield b"x"

    for wrong in (0, 4, 6):
        with pytest.raises(OffsetMismatch, match="does not match the upload's offset 5"):
            await world.handler.patch(TusRequest(upload_id, at(wrong)), body())
    assert not started
    assert (await committed(world.repository, upload_id)).offset == 5
    assert bytes(world.store.volatile[upload_id]) == b"12345"


async def test_a_second_patch_preempts_a_stalled_one(world: World) -> None:
    data = payload(10 * CHUNK)
    upload_id = await create(world.handler, len(data))
    stalled = anyio.Event()
    first: list[TusResponse] = []

    async def stalling() -> AsyncIterator[bytes]:
        yield data[:CHUNK]
        yield data[CHUNK : 2 * CHUNK]
        stalled.set()
        await anyio.sleep_forever()  # a client that vanished without closing its connection
        yield b"never"

    async def run_first() -> None:
        first.append(await world.handler.patch(TusRequest(upload_id, at(0)), stalling()))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(run_first)
            await stalled.wait()
            second = await world.handler.patch(
                TusRequest(upload_id, at(2 * CHUNK)), chunks(data[2 * CHUNK :])
            )
    assert offset_of(first[0]) == 2 * CHUNK
    assert offset_of(second) == len(data)
    assert bytes(world.store.durable[upload_id]) == data


async def test_head_during_a_patch_neither_waits_nor_preempts(world: World) -> None:
    data = payload(6 * CHUNK)
    upload_id = await create(world.handler, len(data))
    stalled, go = anyio.Event(), anyio.Event()
    first: list[TusResponse] = []

    async def pausing() -> AsyncIterator[bytes]:
        yield data[:CHUNK]
        stalled.set()
        await go.wait()
        for piece in pieces(data[CHUNK:]):
            yield piece

    async def run_first() -> None:
        first.append(await world.handler.patch(TusRequest(upload_id, at(0)), pausing()))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(run_first)
            await stalled.wait()
            head = await world.handler.head(TusRequest(upload_id, tus()))
            assert offset_of(head) == 0  # only committed bytes are reported
            go.set()
    assert offset_of(first[0]) == len(data)


async def test_a_body_without_a_byte_for_body_idle_timeout_ends_as_if_cut() -> None:
    world = make_world(replace(CONFIG, body_idle_timeout=0.2))
    data = payload(3 * CHUNK)
    upload_id = await create(world.handler, len(data))
    never = anyio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield data[:CHUNK]
        await never.wait()  # the client neither sends nor goes away
        yield data[CHUNK:]

    with anyio.fail_after(GUARD):
        stalled = await world.handler.patch(TusRequest(upload_id, at(0)), stalls())
    assert stalled.status == 204
    assert offset_of(stalled) == CHUNK  # what arrived is durable and committed
    assert (await committed(world.repository, upload_id)).offset == CHUNK
    with anyio.fail_after(GUARD):  # the lock was let go: the upload goes on at once
        resumed = await world.handler.patch(TusRequest(upload_id, at(CHUNK)), chunks(data[CHUNK:]))
    assert offset_of(resumed) == len(data)


async def test_start_up_reconciliation_goes_past_an_upload_it_cannot_reconcile() -> None:
    class Unreachable(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.broken: set[str] = set()

        async def size(self, key: StorageKey) -> int:
            if key.upload_id in self.broken:
                raise Unavailable("object storage is unreachable")
            return await super().size(key)

    store = Unreachable()
    world = make_world(store=store)
    broken = await create(world.handler, 10)
    fine = await create(world.handler, 10)
    store.broken.add(broken)
    store.volatile[fine] += b"uncommitted"  # a kill left bytes past the committed offset
    assert await world.handler.reconcile_all() == 1  # the other one, cut back
    assert bytes(store.volatile[fine]) == b""


# -- the crash story ------------------------------------------------------------------------------


class Killed(BaseException):
    """kill -9: nothing after it reaches the disk or the database."""


@dataclass
class KillSwitch:
    store: MemoryStore
    point: tuple[str, int]
    dead: bool = False
    syncs: int = 0
    commits: int = 0
    acknowledged: list[int] = field(default_factory=list)  # offsets committed (reportable)

    def check(self) -> None:
        if self.dead:
            raise Killed

    def kill(self) -> NoReturn:
        self.dead = True
        self.store.crash()  # everything not synced is lost
        raise Killed


class KillableAppender:
    def __init__(self, inner: Appender, switch: KillSwitch) -> None:
        self._inner = inner
        self._switch = switch

    @property
    def offset(self) -> int:
        return self._inner.offset

    async def write(self, data: bytes) -> None:
        self._switch.check()
        await self._inner.write(data)

    async def settle(self) -> None:
        self._switch.check()
        await self._inner.settle()

    async def sync(self) -> int:
        self._switch.check()
        durable = await self._inner.sync()
        self._switch.syncs += 1
        if self._switch.point == ("after_sync", self._switch.syncs):
            self._switch.kill()
        return durable

    async def aclose(self) -> None:
        await self._inner.aclose()


class KillableStore:
    def __init__(self, inner: MemoryStore, switch: KillSwitch) -> None:
        self._inner = inner
        self._switch = switch

    async def create(self, upload_id: str, length: int | None = None) -> StorageKey:
        self._switch.check()
        return await self._inner.create(upload_id, length)

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> Appender:
        self._switch.check()
        inner = await self._inner.append(key, offset, hashers, fence)
        return KillableAppender(inner, self._switch)

    async def size(self, key: StorageKey) -> int:
        self._switch.check()
        return await self._inner.size(key)

    async def discard_tail(self, key: StorageKey, length: int) -> None:
        self._switch.check()
        await self._inner.discard_tail(key, length)

    def read(self, key: StorageKey, start: int, end: int) -> AsyncIterator[bytes]:
        return self._inner.read(key, start, end)

    async def delete(self, key: StorageKey) -> None:
        self._switch.check()
        await self._inner.delete(key)

    async def stored_before(self, moment: datetime) -> list[StorageKey]:
        self._switch.check()
        return await self._inner.stored_before(moment)

    async def digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        self._switch.check()
        return await self._inner.digest(key, hasher)

    async def concatenate(self, key: StorageKey, parts: Sequence[StorageKey]) -> int:
        self._switch.check()
        return await self._inner.concatenate(key, parts)

    async def check(self) -> None:
        await self._inner.check()

    async def aclose(self) -> None:
        await self._inner.aclose()


class KillableRepository(SqlUploadRepository):
    def __init__(self, repository: SqlUploadRepository, switch: KillSwitch) -> None:
        super().__init__(repository._sessions)
        self._switch = switch

    async def advance(
        self,
        upload_id: str,
        *,
        expected: int,
        offset: int,
        now: datetime,
        expires_at: datetime | None,
        fence: int | None = None,
        quota: Quota | None = None,
    ) -> Upload:
        self._switch.check()
        upload = await super().advance(
            upload_id,
            expected=expected,
            offset=offset,
            now=now,
            expires_at=expires_at,
            fence=fence,
            quota=quota,
        )
        self._switch.commits += 1
        self._switch.acknowledged.append(upload.offset)
        if self._switch.point == ("after_commit", self._switch.commits):
            self._switch.kill()
        return upload

    async def set_received(self, upload_id: str, received: int) -> None:
        self._switch.check()
        await super().set_received(upload_id, received)

    async def force_offset(
        self,
        upload_id: str,
        *,
        expected: int,
        offset: int,
        now: datetime,
        fence: int | None = None,
    ) -> Upload:
        self._switch.check()
        return await super().force_offset(
            upload_id, expected=expected, offset=offset, now=now, fence=fence
        )


KILL_POINTS = [
    ("body", 0),  # nothing written yet
    ("body", 5),  # bytes written, never synced
    ("body", 16),  # right after the first checkpoint
    ("body", 23),  # a checkpoint behind, bytes written since
    ("body", 55),  # just before the end of the body
    ("after_sync", 1),  # durable but not committed
    ("after_sync", 3),
    ("after_sync", 4),  # the final sync, after the body ended
    ("after_commit", 1),  # committed, response never sent
    ("after_commit", 4),
]


@pytest.mark.parametrize("point", KILL_POINTS, ids=[f"{name}-{n}" for name, n in KILL_POINTS])
async def test_after_a_kill_reconciliation_reports_only_durable_committed_bytes(
    databases: Databases, point: tuple[str, int]
) -> None:
    # On the SQL repository (both databases): the restart below is a new process over what
    # survived the kill, and the memory repository's state dies with its process.
    data = payload(3 * MiB + MiB // 2)  # 56 chunks; checkpoints after 16, 32 and 48
    length = 4 * MiB
    memory = MemoryStore()
    switch = KillSwitch(memory, point)
    killed = databases.repository()  # the process about to be killed
    setup = make_world(store=memory, repository=killed)
    upload_id = await create(setup.handler, length)
    doomed = TusHandler(
        store=KillableStore(memory, switch),
        repository=KillableRepository(killed, switch),
        locker=MemoryLocker(),
        config=CONFIG,
        clock=Clock(),
    )

    async def body() -> AsyncIterator[bytes]:
        for number, piece in enumerate(pieces(data)):
            if point == ("body", number):
                switch.kill()
            yield piece

    with pytest.raises(Killed):
        await doomed.patch(TusRequest(upload_id, at(0)), body())
    assert switch.dead

    # Restart: a new process with a new engine and locker over what survived.
    restarted = make_world(store=memory, repository=databases.repository())
    assert await restarted.handler.reconcile_all() == 1
    upload = await committed(restarted.repository, upload_id)
    durable = bytes(memory.durable[upload_id])
    acknowledged = max(switch.acknowledged, default=0)
    assert upload.offset <= len(durable), "an offset beyond the durable bytes was reported"
    assert upload.offset >= acknowledged, "reconciliation went back past a committed offset"
    assert upload.offset == acknowledged  # an honest store loses nothing it synced
    assert await memory.size(upload.storage) == upload.offset  # uncommitted leftovers are cut
    assert durable[: upload.offset] == data[: upload.offset]
    head = await restarted.handler.head(TusRequest(upload_id, tus()))
    assert offset_of(head) == upload.offset

    rest = payload(length - len(data), seed=2)
    whole = data + rest
    resumed = await restarted.handler.patch(
        TusRequest(upload_id, at(upload.offset)), chunks(whole[upload.offset :])
    )
    assert offset_of(resumed) == length
    assert bytes(memory.durable[upload_id]) == whole
    assert (await committed(restarted.repository, upload_id)).state is UploadState.READY


# -- reconciliation -------------------------------------------------------------------------------


async def _put_uncommitted(store: MemoryStore, key: StorageKey, offset: int, data: bytes) -> None:
    appender = await store.append(key, offset)
    await appender.write(data)
    await appender.sync()
    await appender.aclose()


async def test_reconcile_cuts_stored_bytes_past_the_offset(world: World) -> None:
    upload_id = await create(world.handler, 100)
    await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456789"))
    key = await key_of(world, upload_id)
    await _put_uncommitted(world.store, key, 10, b"never committed")
    assert await world.handler.reconcile_all() == 1
    assert await world.store.size(key) == 10
    assert bytes(world.store.durable[upload_id]) == b"0123456789"
    assert (await committed(world.repository, upload_id)).offset == 10


async def test_reconcile_lowers_the_offset_when_storage_holds_fewer_bytes(world: World) -> None:
    upload_id = await create(world.handler, 100)
    await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456789"))
    key = await key_of(world, upload_id)
    await world.store.discard_tail(key, 4)  # storage lost bytes it had confirmed
    assert await world.handler.reconcile_all() == 1
    upload = await committed(world.repository, upload_id)
    assert (upload.offset, upload.received) == (4, 4)
    assert offset_of(await world.handler.head(TusRequest(upload_id, tus()))) == 4


async def test_head_reconciles_an_offset_storage_cannot_back(world: World) -> None:
    upload_id = await create(world.handler, 100)
    await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456789"))
    await world.store.discard_tail(await key_of(world, upload_id), 7)
    assert offset_of(await world.handler.head(TusRequest(upload_id, tus()))) == 7
    assert (await committed(world.repository, upload_id)).offset == 7


async def test_reconcile_recreates_missing_storage_at_offset_zero(world: World) -> None:
    upload_id = await create(world.handler, 100)
    await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456789"))
    key = await key_of(world, upload_id)
    await world.store.delete(key)
    assert await world.handler.reconcile_all() == 1
    assert await world.store.size(key) == 0
    assert (await committed(world.repository, upload_id)).offset == 0
    resumed = await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"again"))
    assert offset_of(resumed) == 5


async def test_start_up_completes_an_upload_killed_between_its_last_commit_and_complete(
    world: World,
) -> None:
    upload_id = await create(world.handler, 10)
    await _put_uncommitted(world.store, await key_of(world, upload_id), 0, b"0123456789")
    await world.repository.advance(upload_id, expected=0, offset=10, now=T0, expires_at=None)
    assert (await committed(world.repository, upload_id)).state is UploadState.RECEIVING
    assert await world.handler.reconcile_all() == 1
    upload = await committed(world.repository, upload_id)
    assert (upload.state, upload.offset) == (UploadState.READY, 10)
    assert upload.sha256 == hashlib.sha256(b"0123456789").hexdigest()


async def test_reconcile_all_looks_only_at_unfinished_uploads(world: World) -> None:
    receiving = [await create(world.handler, 10), await create(world.handler, None)]
    finished = await create(world.handler, 3)
    await world.handler.patch(TusRequest(finished, at(0)), chunks(b"abc"))
    await create(world.handler, 0)  # complete at creation
    assert await world.handler.reconcile_all() == len(receiving)


# -- expiry and termination -----------------------------------------------------------------------


async def test_an_upload_expires_after_expire_after_since_its_last_commit() -> None:
    world = make_world(replace(CONFIG, expire_after=60))
    created = await world.handler.create(TusRequest(headers=tus(upload_length="10")), empty())
    assert created.headers["Upload-Expires"] == http_date(T0 + timedelta(seconds=60))
    assert created.upload_id is not None
    upload_id = created.upload_id

    world.clock.advance(30)
    patched = await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"1234"))
    assert patched.headers["Upload-Expires"] == http_date(T0 + timedelta(seconds=90))

    world.clock.advance(59)  # T0 + 89
    head = await world.handler.head(TusRequest(upload_id, tus()))
    assert offset_of(head) == 4
    assert head.headers["Upload-Expires"] == "Tue, 01 Jan 2030 12:01:30 GMT"

    world.clock.advance(1)  # T0 + 90: the moment it expires
    with pytest.raises(Gone, match="expired"):
        await world.handler.head(TusRequest(upload_id, tus()))
    with pytest.raises(Gone, match="expired"):
        await world.handler.patch(TusRequest(upload_id, at(4)), chunks(b"5678"))
    assert (await committed(world.repository, upload_id)).offset == 4
    assert bytes(world.store.durable[upload_id]) == b"1234"

    deleted = await world.handler.delete(
        TusRequest(upload_id, tus())
    )  # clean-up of expired uploads
    assert deleted.status == 204
    assert (await committed(world.repository, upload_id)).state is UploadState.TERMINATED


async def test_orphaned_bytes_are_swept_once_older_than_orphan_grace() -> None:
    world = make_world(replace(CONFIG, orphan_grace=30), clock=Clock(datetime.now(UTC)))
    orphan = "0f" * 16
    await world.store.create(orphan)  # storage no row names: a crash before the row's insert
    kept = await create(world.handler, 10)
    await world.handler.lifecycle.expire()
    assert orphan in world.store.volatile  # younger than the grace: kept
    world.clock.advance(31)
    await world.handler.lifecycle.expire()
    assert orphan not in world.store.volatile
    assert kept in world.store.volatile  # a row names it


async def test_a_finished_upload_never_expires() -> None:
    world = make_world(replace(CONFIG, expire_after=60))
    upload_id = await create(world.handler, 3)
    done = await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"abc"))
    assert "Upload-Expires" not in done.headers
    world.clock.advance(365 * 24 * 3600)
    head = await world.handler.head(TusRequest(upload_id, tus()))
    assert offset_of(head) == 3
    assert (await world.handler.downloadable(TusRequest(upload_id))).offset == 3


async def test_a_terminated_upload_is_gone(world: World) -> None:
    upload_id = await create(world.handler, 10)
    await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"12345"))
    response = await world.handler.delete(TusRequest(upload_id, tus()))
    assert response.status == 204
    with pytest.raises(NotFound):
        await world.store.size(await key_of(world, upload_id))
    with pytest.raises(Gone, match="terminated"):
        await world.handler.head(TusRequest(upload_id, tus()))
    with pytest.raises(Gone, match="terminated"):
        await world.handler.patch(TusRequest(upload_id, at(5)), chunks(b"67890"))
    with pytest.raises(Gone, match="terminated"):
        await world.handler.downloadable(TusRequest(upload_id))
    with pytest.raises(Gone, match="terminated"):
        await world.handler.delete(TusRequest(upload_id, tus()))
    upload = await committed(world.repository, upload_id)
    assert upload.state is UploadState.TERMINATED
    assert upload.offset == 5


# -- compare-and-set ------------------------------------------------------------------------------


async def test_advance_with_a_stale_expected_offset_is_a_conflict(world: World) -> None:
    upload_id = await create(world.handler, 10)
    repository = world.repository
    moved = await repository.advance(upload_id, expected=0, offset=4, now=T0, expires_at=None)
    assert moved.offset == 4
    with pytest.raises(Conflict):
        await repository.advance(upload_id, expected=0, offset=8, now=T0, expires_at=None)
    assert (await committed(repository, upload_id)).offset == 4
    with pytest.raises(Conflict):  # not every byte is there yet
        await repository.complete(upload_id, T0)
    arrived = await repository.advance(upload_id, expected=4, offset=10, now=T0, expires_at=None)
    assert arrived.state is UploadState.RECEIVING  # completing is its own, explicit step
    finished = await repository.complete(upload_id, T0)
    assert finished.state is UploadState.VERIFYING
    assert finished.completed_at == T0


async def test_a_patch_never_overwrites_an_offset_moved_under_it(world: World) -> None:
    upload_id = await create(world.handler, 100 * CHUNK)

    async def interrupted() -> AsyncIterator[bytes]:
        for number, piece in enumerate(pieces(payload(8 * CHUNK))):
            if number == 3:  # another writer (a second node, a bug) moves the offset meanwhile
                await world.repository.force_offset(upload_id, expected=0, offset=7, now=T0)
            yield piece

    with pytest.raises(Conflict):
        await world.handler.patch(TusRequest(upload_id, at(0)), interrupted())
    assert (await committed(world.repository, upload_id)).offset == 7
    assert not world.locker.held(upload_id)


async def test_deferred_length_is_declared_once(world: World) -> None:
    upload_id = await create(world.handler, None)
    await world.handler.patch(TusRequest(upload_id, at(0)), chunks(b"abc"))
    headers = replace(at(3), upload_length="5")
    done = await world.handler.patch(TusRequest(upload_id, headers), chunks(b"de"))
    assert offset_of(done) == 5
    upload = await committed(world.repository, upload_id)
    assert (upload.length, upload.state) == (5, UploadState.READY)


async def test_drain_makes_every_running_patch_commit_and_answer(world: World) -> None:
    uploads = [payload(10 * CHUNK), payload(8 * CHUNK)]
    ids = [await create(world.handler, len(data)) for data in uploads]
    answered: dict[str, TusResponse] = {}
    stalled = [anyio.Event() for _ in ids]

    def stalling(data: bytes, sent: int, event: anyio.Event) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            for piece in pieces(data[:sent]):
                yield piece
            event.set()
            await anyio.sleep_forever()  # a slow client, mid-body
            yield b"never"

        return body()

    async def run(upload_id: str, body: AsyncIterator[bytes]) -> None:
        answered[upload_id] = await world.handler.patch(TusRequest(upload_id, at(0)), body)

    sent = [3 * CHUNK + 7, 5 * CHUNK]
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            for upload_id, data, count, event in zip(ids, uploads, sent, stalled, strict=True):
                group.start_soon(run, upload_id, stalling(data, count, event))
            for event in stalled:
                await event.wait()
            assert world.handler.drain() == 2
    for upload_id, data, count in zip(ids, uploads, sent, strict=True):
        assert answered[upload_id].status == 204
        assert offset_of(answered[upload_id]) == count
        assert (await committed(world.repository, upload_id)).offset == count
        assert bytes(world.store.durable[upload_id]) == data[:count]


async def test_a_patch_after_drain_lets_go_at_once(world: World) -> None:
    data = payload(4 * CHUNK)
    upload_id = await create(world.handler, len(data))
    assert world.handler.drain() == 0

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield data[:CHUNK]
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(GUARD):
        response = await world.handler.patch(TusRequest(upload_id, at(0)), endless())
    assert response.status == 204
    assert offset_of(response) <= CHUNK  # at most the chunk in hand before the first await
    assert (await committed(world.repository, upload_id)).offset == offset_of(response)


async def test_a_request_reserves_again_what_a_cut_back_tail_released() -> None:
    """A reservation released by a discarded checksummed request is taken again before the next
    request writes; when the space went to another upload meanwhile, that request is a 507
    before any byte is stored."""
    world = make_world(store=MemoryStore(capacity=100))
    upload_id = await create(world.handler, 60)
    wrong = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    headers = replace(at(0), upload_checksum=wrong)
    with pytest.raises(ChecksumMismatch):
        await world.handler.patch(TusRequest(upload_id, headers), chunks(payload(30)))
    assert upload_id not in world.store.reserved  # cut back: released, as ftruncate does
    other = await create(world.handler, 60)  # so the space is free for another upload
    with pytest.raises(StorageFull):
        await world.handler.patch(TusRequest(upload_id, at(0)), chunks(payload(10)))
    assert bytes(world.store.volatile[upload_id]) == b""
    assert (await committed(world.repository, upload_id)).offset == 0
    await world.handler.delete(TusRequest(other, tus()))
    data = payload(60)
    done = await world.handler.patch(TusRequest(upload_id, at(0)), chunks(data))
    assert offset_of(done) == 60
    assert bytes(world.store.durable[upload_id]) == data
