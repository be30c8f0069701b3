"""The handler follows what the configured store really supports.

A store with only the core (create, append, size, read, delete) still offers the tus core, creation,
termination, expiration and all-or-nothing checksums; without ``Concatenator`` it neither advertises
nor accepts concatenation; without ``Digester`` the whole-file digest streams through ``read``; a
``Finisher`` finishes every upload before it leaves ``receiving``; and an appender whose ``sync``
makes only a prefix durable (whole parts, as an object store does) gets exactly that prefix
committed, never more.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import pytest

from tests.conftest import Databases
from tests.test_handler import (
    CONFIG,
    Clock,
    at,
    chunks,
    committed,
    create,
    empty,
    offset_of,
    tus,
)
from upload_service.errors import BadRequest, StorageError
from upload_service.locking.memory import MemoryLocker
from upload_service.storage.base import (
    Appender,
    Checkpointer,
    Concatenator,
    Digester,
    Fence,
    Hasher,
    StorageKey,
    TailDiscarder,
)
from upload_service.storage.memory import MemoryStore
from upload_service.tus.checksum import ChecksumMismatch
from upload_service.tus.handler import TusHandler
from upload_service.tus.request import TusRequest
from upload_service.tus.types import HandlerConfig
from upload_service.uploads import UploadState

PART = 4  # the "part size" of the prefix-durable store below


class CoreStore:
    """Only the core Store, over a MemoryStore."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.lengths: dict[str, int | None] = {}  # the length hint create was given, by upload

    async def create(self, upload_id: str, length: int | None = None) -> StorageKey:
        self.lengths[upload_id] = length
        key = await self.inner.create(upload_id, length)
        return replace(key, ref=f"ref-{upload_id[:6]}")  # a backend reference the row must keep

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> Appender:
        assert key.ref == f"ref-{key.upload_id[:6]}", "the row did not keep the storage reference"
        return await self.inner.append(key, offset, hashers, fence)

    async def size(self, key: StorageKey) -> int:
        return await self.inner.size(key)

    def read(self, key: StorageKey, start: int, end: int) -> AsyncIterator[bytes]:
        self.reads += 1
        return self.inner.read(key, start, end)

    async def delete(self, key: StorageKey) -> None:
        await self.inner.delete(key)

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    reads = 0


class PartAppender:
    """Makes bytes durable only in whole parts of ``PART`` bytes, except when finished."""

    def __init__(self, inner: Appender, start: int) -> None:
        self._inner = inner
        self._start = start

    @property
    def offset(self) -> int:
        return self._inner.offset

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def settle(self) -> None:
        await self._inner.settle()

    async def sync(self) -> int:
        written = await self._inner.sync()
        return written - (written % PART)  # the tail stays spooled, not durable

    async def aclose(self) -> None:
        await self._inner.aclose()


class PartStore(CoreStore):
    def __init__(self) -> None:
        super().__init__()
        self.finished: list[tuple[str, int]] = []

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> Appender:
        return PartAppender(await super().append(key, offset, hashers, fence), offset)

    async def finish(self, key: StorageKey, length: int) -> None:
        self.finished.append((key.upload_id, length))


def handler_over(
    store: CoreStore | MemoryStore, databases: Databases, config: HandlerConfig = CONFIG
) -> TusHandler:
    return TusHandler(
        store=store,
        repository=databases.repository(),
        locker=MemoryLocker(),
        config=config,
        clock=Clock(),
    )


def test_a_core_store_has_no_optional_capability() -> None:
    store = CoreStore()
    for capability in (Concatenator, TailDiscarder, Digester):
        assert not isinstance(store, capability)


async def test_without_concatenation_it_is_neither_advertised_nor_accepted(
    databases: Databases,
) -> None:
    handler = handler_over(CoreStore(), databases)
    extensions = handler.options().headers["Tus-Extension"].split(",")
    assert "concatenation" not in extensions
    assert "concatenation-unfinished" not in extensions
    assert {"creation", "termination", "checksum", "expiration"} <= set(extensions)
    with pytest.raises(BadRequest, match="concatenation is not supported"):
        await handler.create(
            TusRequest(headers=tus(upload_length="5", upload_concat="partial")), empty()
        )

    full = handler_over(MemoryStore(), databases)  # the memory store has every capability
    assert "concatenation" in full.options().headers["Tus-Extension"].split(",")


async def test_a_core_store_keeps_the_reference_and_verifies_by_reading(
    databases: Databases,
) -> None:
    store = CoreStore()
    handler = handler_over(store, databases)
    upload_id = await create(handler, 6)
    upload = await committed(handler._repo, upload_id)
    assert upload.storage_ref == f"ref-{upload_id[:6]}"
    # two requests: the second opens a new appender, so no digest was kept running across them
    await handler.patch(TusRequest(upload_id, at(0)), chunks(b"abc"))
    handler._digests.drop(upload_id)
    await handler.patch(TusRequest(upload_id, at(3)), chunks(b"def"))
    upload = await committed(handler._repo, upload_id)
    assert upload.state is UploadState.READY
    assert upload.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert store.reads == 1  # the whole file, streamed through read


async def test_a_checksum_mismatch_changes_nothing_on_a_store_that_cannot_cut_back(
    databases: Databases,
) -> None:
    store = CoreStore()
    handler = handler_over(store, databases)
    upload_id = await create(handler, 10)
    await handler.patch(TusRequest(upload_id, at(0)), chunks(b"01234"))
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    with pytest.raises(ChecksumMismatch):
        await handler.patch(
            TusRequest(upload_id, replace(at(5), upload_checksum=wrong)), chunks(b"56789")
        )
    assert (await committed(handler._repo, upload_id)).offset == 5
    assert bytes(store.inner.durable[upload_id]) == b"01234"  # nothing of it was made durable
    right = "sha1 " + base64.b64encode(hashlib.sha1(b"56789").digest()).decode()
    done = await handler.patch(
        TusRequest(upload_id, replace(at(5), upload_checksum=right)), chunks(b"56789")
    )
    assert offset_of(done) == 10


async def test_only_the_durable_prefix_is_committed_and_finish_comes_before_verifying(
    databases: Databases,
) -> None:
    store = PartStore()
    handler = handler_over(store, databases)
    upload_id = await create(handler, 2 * PART)
    first = await handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456"))
    assert offset_of(first) == PART  # 7 bytes written, one whole part durable
    upload = await committed(handler._repo, upload_id)
    assert (upload.offset, upload.received, upload.state) == (4, 4, UploadState.RECEIVING)
    assert store.finished == []
    second = await handler.patch(TusRequest(upload_id, at(PART)), chunks(b"4567"))
    assert offset_of(second) == 2 * PART
    assert store.finished == [(upload_id, 2 * PART)]
    upload = await committed(handler._repo, upload_id)
    assert upload.state is UploadState.READY
    assert upload.sha256 == hashlib.sha256(b"01234567").hexdigest()


async def test_a_checksummed_request_made_durable_only_in_part_commits_nothing(
    databases: Databases,
) -> None:
    store = PartStore()
    handler = handler_over(store, databases)
    upload_id = await create(handler, 10)
    checksum = "sha1 " + base64.b64encode(hashlib.sha1(b"abcdef").digest()).decode()
    with pytest.raises(StorageError, match="whole checksummed request"):
        await handler.patch(
            TusRequest(upload_id, replace(at(0), upload_checksum=checksum)), chunks(b"abcdef")
        )
    assert (await committed(handler._repo, upload_id)).offset == 0


class CheckpointAppender(PartAppender):
    """A ``Checkpointer``: ``checkpoint`` makes only whole parts durable, ``sync`` everything."""

    def __init__(self, inner: Appender, start: int, calls: list[tuple[str, int]]) -> None:
        super().__init__(inner, start)
        self._calls = calls

    async def checkpoint(self) -> int:
        written = await self._inner.sync()
        durable = written - (written % PART)
        self._calls.append(("checkpoint", durable))
        return durable

    async def sync(self) -> int:
        durable = await self._inner.sync()
        self._calls.append(("sync", durable))
        return durable


class CheckpointStore(CoreStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.offsets: list[int] = []  # the committed offset at each checkpoint

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> Appender:
        inner = await super().append(key, offset, hashers, fence)
        return CheckpointAppender(inner, offset, self.calls)


def test_the_checkpointing_appender_is_a_checkpointer() -> None:
    appender = CheckpointAppender(None, 0, [])  # type: ignore[arg-type]
    assert isinstance(appender, Checkpointer)
    assert not isinstance(PartAppender(None, 0), Checkpointer)  # type: ignore[arg-type]


async def test_checkpoints_mid_request_use_the_cheap_checkpoint_and_the_end_a_full_sync(
    databases: Databases,
) -> None:
    store = CheckpointStore()
    handler = handler_over(store, databases, replace(CONFIG, checkpoint_bytes=3))
    upload_id = await create(handler, 20)
    store.calls.clear()
    done = await handler.patch(TusRequest(upload_id, at(0)), chunks(b"0123456789", size=3))
    assert offset_of(done) == 10  # the end syncs everything, the tail included
    # every 3 bytes a checkpoint (whole parts only: 0, 4, 8), then one sync of all 10
    assert store.calls == [("checkpoint", 0), ("checkpoint", 4), ("checkpoint", 8), ("sync", 10)]
    upload = await committed(handler._repo, upload_id)
    assert (upload.offset, upload.state) == (10, UploadState.RECEIVING)


async def test_a_checkpoint_behind_the_bytes_does_not_checkpoint_on_every_chunk(
    databases: Databases,
) -> None:
    """A checkpoint that commits less than was written (the part is still being built) must not
    make every following chunk a checkpoint: the cadence counts bytes since the last one."""
    store = CheckpointStore()
    handler = handler_over(store, databases, replace(CONFIG, checkpoint_bytes=2))
    upload_id = await create(handler, 20)
    store.calls.clear()
    await handler.patch(TusRequest(upload_id, at(0)), chunks(b"012345", size=1))
    checkpoints = [call for call in store.calls if call[0] == "checkpoint"]
    assert len(checkpoints) == 3  # after bytes 2, 4 and 6: not after every byte past 2


async def test_create_is_told_the_upload_length_when_it_is_known(databases: Databases) -> None:
    store = CoreStore()
    handler = handler_over(store, databases)
    known = await create(handler, 123)
    deferred = await create(handler, None)
    assert store.lengths == {known: 123, deferred: None}
