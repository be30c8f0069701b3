"""The S3 appender's parts in flight, against the real moto server: parts confirmed out of order,
a part that fails while later ones succeed, checkpoints that cost an empty object whatever the
part size, and nothing sent after ``aclose``. (The store contract suite covers the rest.)"""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator
from typing import IO, Any

import anyio
import anyio.to_thread
import pytest

from tests import s3 as moto
from upload_service.errors import StorageError, StorageUnavailable
from upload_service.storage.base import Appender, Checkpointer, StorageKey
from upload_service.storage.s3.client import ObjectClient, Part
from upload_service.storage.s3.layout import MAX_PARTS
from upload_service.storage.s3.store import S3Store

MiB = 1024 * 1024
PART = 5 * MiB
UPLOAD_ID = "ab" * 16


class ControlledClient:
    """The real client, with part uploads that can be held back or made to fail by number, and
    a record of what was sent."""

    def __init__(self, real: ObjectClient) -> None:
        self._real = real
        self.hold: dict[int, threading.Event] = {}
        self.fail: set[int] = set()
        self.parts_sent: list[int] = []
        self.tails_sent: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: IO[bytes], length: int
    ) -> Part:
        if number in self.hold:
            assert self.hold[number].wait(30), "a held part was never released"
        if number in self.fail:
            raise StorageUnavailable("cannot write upload data: object storage is unreachable")
        part = self._real.upload_part(bucket, key, upload_id, number, body, length)
        with self._lock:
            self.parts_sent.append(number)
        return part

    def put_object(self, bucket: str, key: str, body: IO[bytes], length: int) -> None:
        self._real.put_object(bucket, key, body, length)
        with self._lock:
            self.tails_sent.append((key.rsplit(".", 1)[-1], length))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
async def s3(moto_endpoint: str) -> AsyncIterator[tuple[S3Store, ControlledClient]]:
    bucket = await anyio.to_thread.run_sync(moto.new_bucket, moto_endpoint)
    client = ControlledClient(moto.client(moto_endpoint))
    store = S3Store(
        client, bucket, "uploads/", part_size=PART, concurrency=3, max_size=MAX_PARTS * PART
    )
    try:
        yield store, client
    finally:
        await store.aclose()


def _data(size: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(size)


async def _content(store: S3Store, key: StorageKey, length: int) -> bytes:
    await store.finish(key, length)
    return b"".join([piece async for piece in store.read(key, 0, length)])


async def _write_then_sync(appender: Appender, data: bytes) -> int:
    await appender.write(data)
    return await appender.sync()


async def test_the_appender_is_a_checkpointer(s3: tuple[S3Store, ControlledClient]) -> None:
    store, _client = s3
    key = await store.create(UPLOAD_ID)
    appender = await store.append(key, 0)
    try:
        assert isinstance(appender, Checkpointer)
    finally:
        await appender.aclose()


async def test_parts_confirmed_out_of_order_count_only_as_a_contiguous_run(
    s3: tuple[S3Store, ControlledClient],
) -> None:
    store, client = s3
    key = await store.create(UPLOAD_ID)
    data = _data(3 * PART + 100)
    client.hold[1] = threading.Event()
    appender = await store.append(key, 0)
    try:
        await appender.write(data[: 3 * PART])
        await anyio.sleep(0.5)  # parts 2 and 3 go out while part 1 is held
        assert await appender.checkpoint() == 0  # part 1 not confirmed: nothing counts
        assert await store.size(key) == 0
        client.hold[1].set()
        await appender.write(data[3 * PART :])
        assert await appender.sync() == len(data)
    finally:
        await appender.aclose()
    assert sorted(client.parts_sent) == [1, 2, 3]
    assert await store.size(key) == len(data)
    assert await _content(store, key, len(data)) == data


async def test_a_checkpoint_writes_an_empty_tail_not_the_part_being_built(
    s3: tuple[S3Store, ControlledClient],
) -> None:
    store, client = s3
    key = await store.create(UPLOAD_ID)
    data = _data(2 * PART + 3 * MiB)
    appender = await store.append(key, 0)
    try:
        await appender.write(data)
        client.tails_sent.clear()
        durable = await appender.checkpoint()
        assert durable in (0, PART, 2 * PART)  # whatever was confirmed, in whole parts
        while durable < 2 * PART:  # the parts in flight land; each checkpoint counts them
            await anyio.sleep(0.05)
            durable = await appender.checkpoint()
        assert await store.size(key) == 2 * PART
        assert all(size == 0 for _slot, size in client.tails_sent)  # never part bytes
        assert await appender.sync() == len(data)  # the part being built, as the tail, once
        assert client.tails_sent[-1] == ("3", 3 * MiB)
    finally:
        await appender.aclose()
    assert await _content(store, key, len(data)) == data


async def test_a_failed_part_keeps_the_run_before_it_and_the_upload_resumes(
    s3: tuple[S3Store, ControlledClient],
) -> None:
    store, client = s3
    key = await store.create(UPLOAD_ID)
    data = _data(4 * PART + 7)
    client.fail.add(2)
    appender = await store.append(key, 0)
    try:
        await appender.write(data[: 3 * PART])  # parts 1-3 handed out; 2 fails in flight
        with pytest.raises(StorageError):  # the failure surfaces at the next call
            await _write_then_sync(appender, data[3 * PART :])
        durable = await appender.sync()  # after the failure: the durable prefix
    finally:
        await appender.aclose()
    assert durable == PART  # part 1; part 3, confirmed past the hole, does not count
    assert await store.size(key) == PART
    client.fail.clear()
    resumed = await store.append(key, PART)
    try:
        await resumed.write(data[PART:])
        assert await resumed.sync() == len(data)
    finally:
        await resumed.aclose()
    assert await _content(store, key, len(data)) == data


async def test_nothing_is_sent_after_aclose(s3: tuple[S3Store, ControlledClient]) -> None:
    store, client = s3
    key = await store.create(UPLOAD_ID)
    client.hold[1] = threading.Event()
    appender = await store.append(key, 0)
    await appender.write(_data(3 * PART))  # part 1 held, 2 and 3 in flight or sent

    async def release_soon() -> None:
        await anyio.sleep(0.3)
        client.hold[1].set()

    async with anyio.create_task_group() as group:
        group.start_soon(release_soon)
        await appender.aclose()  # waits for what is in flight
        sent = list(client.parts_sent)
    await anyio.sleep(0.5)
    assert client.parts_sent == sent  # nothing went out once aclose returned
    assert await store.size(key) == 0  # never synced: none of it counts


async def test_a_crash_with_parts_in_flight_leaves_the_last_synced_offset(
    s3: tuple[S3Store, ControlledClient],
) -> None:
    """The process dies (the appender is simply dropped) with parts confirmed past the last
    sync: the store's size is the synced offset, and a resume from it ends up intact."""
    store, _client = s3
    key = await store.create(UPLOAD_ID)
    data = _data(3 * PART + 11)
    appender = await store.append(key, 0)
    await appender.write(data[: PART + 5])
    assert await appender.sync() == PART + 5
    await appender.write(data[PART + 5 : 3 * PART + 1])
    await appender.settle()  # parts 2 and 3 handed out, no tail after them
    await appender.aclose()  # (all a crash leaves: the parts, not the tail)
    assert await store.size(key) == PART + 5
    resumed = await store.append(key, PART + 5)
    try:
        await resumed.write(data[PART + 5 :])
        assert await resumed.sync() == len(data)
    finally:
        await resumed.aclose()
    assert await _content(store, key, len(data)) == data
