"""One contract suite for every ``Store``: each backend must behave the same to the handler.

Backend-specific facts (what only a real disk can show: fsync failures, ENOSPC, permissions) are at
the end, against ``LocalStore`` alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import botocore.exceptions
import pytest

from tests import s3 as moto
from upload_service.errors import NotFound, StorageError, StorageFull, StorageUnavailable
from upload_service.storage.base import (
    Appender,
    Concatenator,
    Digester,
    DirectStore,
    Finisher,
    OrphanLister,
    Reserver,
    StorageKey,
    Store,
    TailDiscarder,
)
from upload_service.storage.local.appender import LocalAppender
from upload_service.storage.local.store import LocalStore
from upload_service.storage.memory import MemoryStore
from upload_service.storage.s3.appender import S3Appender
from upload_service.storage.s3.boto import translate
from upload_service.storage.s3.client import ObjectClient, Part
from upload_service.storage.s3.layout import MAX_PARTS, choose_part_size, parse_ref
from upload_service.storage.s3.store import S3Store

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "fedcba9876543210fedcba9876543210"
# An upload is named by the key its store's ``create`` returned (as the handler names it by the key
# on its row). Only an upload that was never created has no such key: this one stands for it.
MISSING = StorageKey(OTHER_ID)
KiB = 1024
MiB = 1024 * KiB


MALFORMED_IDS = [
    "../x",
    "../" + "a" * 29,  # 32 characters, but a path
    "./" + "a" * 30,
    "A" * 32,  # uppercase hex
    "0123456789ABCDEF0123456789abcdef",
    "abc",  # too short
    "",
    "0" * 33,
    "0" * 31 + "g",
    "/tmp/" + "0" * 27,
    "0" * 32 + "\n",
    "0" * 16 + "/" + "0" * 15,
]


CAPABILITIES: tuple[type, ...] = (
    Finisher,
    Concatenator,
    TailDiscarder,
    Digester,
    OrphanLister,
    Reserver,
    DirectStore,
)


@dataclass
class Backend:
    name: str
    store: Store
    # Make writes to this upload fail as the medium would (EIO); returns the repair.
    break_writes: Callable[[str], Callable[[], None]]
    root: Path | None = None  # the directory a filesystem store owns
    # the optional capabilities this backend claims; the suite checks the claim both ways
    capabilities: tuple[type, ...] = (
        Concatenator,
        TailDiscarder,
        Digester,
        OrphanLister,
        Reserver,
    )


C = TypeVar("C")


def capable(backend: Backend, capability: type[C]) -> C:
    """The backend's store as ``capability``; skips (visibly) a backend that does not claim it."""
    if capability not in backend.capabilities:
        pytest.skip(f"{backend.name} does not offer {capability.__name__}")
    assert isinstance(backend.store, capability)
    return backend.store


class DiskFaults:
    """Fails OS-level writes to one file (matched by inode, from any thread), after letting
    ``allow`` more bytes through: the disk as the store's writer thread sees it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path, code: int, allow: int = 0):
        stat = path.stat()
        self._target = (stat.st_dev, stat.st_ino)
        self._code = code
        self._allow = allow
        self._real_write = os.write
        self._real_writev = os.writev
        self.broken = True
        self.failures = 0
        monkeypatch.setattr(os, "write", self._write)
        monkeypatch.setattr(os, "writev", self._writev)

    def _hits(self, fd: int) -> bool:
        if not self.broken:
            return False
        stat = os.fstat(fd)
        return (stat.st_dev, stat.st_ino) == self._target

    def _write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        if self._hits(fd):
            if self._allow <= 0:
                self.failures += 1
                raise OSError(self._code, os.strerror(self._code))
            count = self._real_write(fd, memoryview(data)[: self._allow])
            self._allow -= count
            return count
        return self._real_write(fd, data)

    def _writev(self, fd: int, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        if self._hits(fd):  # the same medium for scattered writes: a prefix, then the error
            return self._write(fd, b"".join(bytes(buffer) for buffer in buffers))
        return self._real_writev(fd, buffers)

    def repair(self) -> None:
        self.broken = False


def _break_local_writes(
    monkeypatch: pytest.MonkeyPatch, store: LocalStore, code: int
) -> Callable[[str], Callable[[], None]]:
    def breaker(upload_id: str) -> Callable[[], None]:
        return DiskFaults(monkeypatch, store.path(upload_id), code).repair

    return breaker


def _break_memory_writes(store: MemoryStore) -> Callable[[str], Callable[[], None]]:
    def breaker(_upload_id: str) -> Callable[[], None]:
        store.fail_writes = True

        def repair() -> None:
            store.fail_writes = False

        return repair

    return breaker


class FaultyClient:
    """An ``ObjectClient`` whose writes (parts, tails) fail as an unreachable endpoint's do while
    ``broken``; everything else goes to the real client."""

    def __init__(self, real: ObjectClient) -> None:
        self._real = real
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name not in ("upload_part", "upload_part_copy", "put_object"):
            return attribute

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.broken:
                raise StorageUnavailable("cannot write upload data: object storage is unreachable")
            return attribute(*args, **kwargs)

        return guarded


def _break_s3_writes(client: FaultyClient) -> Callable[[str], Callable[[], None]]:
    def breaker(_upload_id: str) -> Callable[[], None]:
        client.broken = True

        def repair() -> None:
            client.broken = False

        return repair

    return breaker


S3_PART = 5 * MiB
S3_MAX = MAX_PARTS * S3_PART  # the largest upload: deferred lengths get S3_PART parts too
S3_CAPABILITIES: tuple[type, ...] = (
    Finisher,
    Concatenator,
    TailDiscarder,
    Digester,
    OrphanLister,
    DirectStore,
)


async def s3_store(endpoint: str, **options: Any) -> tuple[S3Store, FaultyClient]:
    """A store on a bucket of its own, through a client whose writes can be broken."""
    bucket = await anyio.to_thread.run_sync(moto.new_bucket, endpoint)
    client = FaultyClient(moto.client(endpoint))
    options.setdefault("max_size", S3_MAX)
    return S3Store(client, bucket, "uploads/", part_size=S3_PART, **options), client


@pytest.fixture(params=["local", "local-tiny-buffer", "memory", "s3"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Backend]:
    name: str = request.param
    result: Backend
    if name.startswith("local"):
        root = tmp_path / "store"
        # A tiny buffer makes every write go through the coalescing and in-flight paths.
        buffer_size = 7 if name == "local-tiny-buffer" else 64 * KiB
        local = LocalStore(root, buffer_size=buffer_size)
        result = Backend(name, local, _break_local_writes(monkeypatch, local, errno.EIO), root)
    elif name == "s3":
        store, client = await s3_store(request.getfixturevalue("moto_endpoint"))
        result = Backend(name, store, _break_s3_writes(client), capabilities=S3_CAPABILITIES)
    else:
        memory = MemoryStore()
        result = Backend(name, memory, _break_memory_writes(memory))
    try:
        yield result
    finally:
        await result.store.aclose()


async def _read_all(store: Store, key: StorageKey, start: int, end: int) -> list[bytes]:
    return [piece async for piece in store.read(key, start, end)]


async def _content(store: Store, key: StorageKey) -> bytes:
    size = await store.size(key)
    return b"".join(await _read_all(store, key, 0, size))


async def _stored(store: Store, upload_id: str, data: bytes) -> StorageKey:
    """Create the upload holding ``data``, durably; return the key ``create`` returned, which
    names the upload from then on."""
    key = await store.create(upload_id)
    assert key.upload_id == upload_id
    appender = await store.append(key, 0)
    try:
        await appender.write(data)
        assert await appender.sync() == len(data)
    finally:
        await appender.aclose()
    return key


def _random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


async def _failed_write(appender: Appender, data: bytes) -> tuple[StorageError, int]:
    """Write ``data`` through broken writes; return the error and the offset ``sync`` reports.

    A failure may surface from ``write`` or (for a store that writes in the background) from
    ``sync``; after it, ``sync`` reports the durable prefix.
    """
    error: StorageError | None = None
    try:
        await appender.write(data)
    except StorageError as exc:
        error = exc
    try:
        durable = await appender.sync()
    except StorageError as exc:
        error = error or exc
        durable = await appender.sync()
    assert error is not None, "a failing medium must surface as StorageError"
    return error, durable


# -- the contract ---------------------------------------------------------------------------------


async def test_create_makes_an_empty_upload(backend: Backend) -> None:
    key = await backend.store.create(UPLOAD_ID)
    assert await backend.store.size(key) == 0
    assert await _read_all(backend.store, key, 0, 0) == []


async def test_append_then_sync_returns_durable_offsets(backend: Backend) -> None:
    store = backend.store
    key = await store.create(UPLOAD_ID)
    first, second, third = _random_bytes(100, 1), _random_bytes(300 * KiB, 2), b"tail"

    appender = await store.append(key, 0)
    try:
        await appender.write(first)
        assert await appender.sync() == 100
        await appender.write(second)
        assert await appender.sync() == 100 + len(second)
    finally:
        await appender.aclose()
    assert await store.size(key) == 100 + len(second)

    resumed = await store.append(key, 100 + len(second))
    try:
        await resumed.write(third)
        assert await resumed.sync() == 100 + len(second) + 4
    finally:
        await resumed.aclose()
    assert await _content(store, key) == first + second + third


async def test_sync_without_writes_returns_the_start(backend: Backend) -> None:
    key = await _stored(backend.store, UPLOAD_ID, b"abcdef")
    appender = await backend.store.append(key, 6)
    try:
        assert await appender.sync() == 6
    finally:
        await appender.aclose()


async def test_offset_counts_buffered_bytes(backend: Backend) -> None:
    store = backend.store
    key = await _stored(store, UPLOAD_ID, b"12345")
    appender = await store.append(key, 5)
    try:
        assert appender.offset == 5
        await appender.write(b"abc")
        assert appender.offset == 8
        await appender.write(b"x" * 20)
        assert appender.offset == 28
        assert await appender.sync() == 28
        assert appender.offset == 28
    finally:
        await appender.aclose()


async def test_append_at_an_offset_cuts_the_leftovers_past_it(backend: Backend) -> None:
    store = backend.store
    data = _random_bytes(100)
    key = await _stored(store, UPLOAD_ID, data)

    appender = await store.append(key, 40)  # bytes 40..99 were never committed
    try:
        assert appender.offset == 40
        assert await appender.sync() == 40
        assert await store.size(key) == 40
        await appender.write(b"new")
        assert await appender.sync() == 43
    finally:
        await appender.aclose()
    assert await _content(store, key) == data[:40] + b"new"


async def test_append_beyond_the_stored_size_raises(backend: Backend) -> None:
    key = await _stored(backend.store, UPLOAD_ID, b"0123456789")
    with pytest.raises(StorageError, match="fewer than offset 11"):
        await backend.store.append(key, 11)
    assert await _content(backend.store, key) == b"0123456789"


async def test_the_backend_offers_exactly_the_capabilities_it_claims(backend: Backend) -> None:
    offered = tuple(cap for cap in CAPABILITIES if isinstance(backend.store, cap))
    assert offered == tuple(cap for cap in CAPABILITIES if cap in backend.capabilities)


async def test_discard_tail(backend: Backend) -> None:
    discarder = capable(backend, TailDiscarder)
    data = _random_bytes(1000)
    key = await _stored(backend.store, UPLOAD_ID, data)
    await discarder.discard_tail(key, 300)
    assert await backend.store.size(key) == 300
    assert await _content(backend.store, key) == data[:300]
    await discarder.discard_tail(key, 0)
    assert await backend.store.size(key) == 0


async def test_discard_tail_never_extends(backend: Backend) -> None:
    """A store must never invent bytes: cutting "back" to more than it holds changes nothing."""
    key = await _stored(backend.store, UPLOAD_ID, b"abc")
    await capable(backend, TailDiscarder).discard_tail(key, 10)
    assert await backend.store.size(key) == 3
    assert await _content(backend.store, key) == b"abc"


async def test_a_reservation_changes_no_size_no_byte_and_no_later_operation(
    backend: Backend,
) -> None:
    reserver = capable(backend, Reserver)
    data = _random_bytes(3000)
    key = await _stored(backend.store, UPLOAD_ID, data[:1000])
    await reserver.reserve(key, 1000, 64 * KiB)
    await reserver.reserve(key, 1000, 64 * KiB)  # again: what is reserved costs nothing
    assert await backend.store.size(key) == 1000
    assert await _content(backend.store, key) == data[:1000]
    appender = await backend.store.append(key, 1000)
    try:
        await appender.write(data[1000:])
        assert await appender.sync() == 3000
    finally:
        await appender.aclose()
    assert await backend.store.size(key) == 3000
    assert await _content(backend.store, key) == data
    await capable(backend, TailDiscarder).discard_tail(key, 2000)  # cut back, then reserved anew
    assert await backend.store.size(key) == 2000
    await reserver.reserve(key, 2000, 64 * KiB)
    assert await _content(backend.store, key) == data[:2000]
    digester = capable(backend, Digester)
    assert await digester.digest(key, hashlib.sha256()) == hashlib.sha256(data[:2000]).digest()
    final = await backend.store.create(OTHER_ID, 2000)  # reserved at creation
    assert await backend.store.size(final) == 0
    assert await capable(backend, Concatenator).concatenate(final, [key, key]) == 4000
    assert await _content(backend.store, final) == data[:2000] * 2


async def test_create_with_a_length_reserves_it_and_keeps_the_upload_empty(
    backend: Backend,
) -> None:
    capable(backend, Reserver)
    key = await backend.store.create(UPLOAD_ID, 256 * KiB)
    assert await backend.store.size(key) == 0
    assert await _content(backend.store, key) == b""
    appender = await backend.store.append(key, 0)
    try:
        await appender.write(b"abc")
        assert await appender.sync() == 3
    finally:
        await appender.aclose()
    assert await _content(backend.store, key) == b"abc"


async def test_memory_reservations_count_against_its_capacity() -> None:
    store = MemoryStore(capacity=1000)
    key = await store.create(UPLOAD_ID, 600)
    with pytest.raises(StorageFull):  # 600 are reserved: 500 more do not fit
        await store.create(OTHER_ID, 500)
    assert await store.stored_before(datetime.now(UTC) + timedelta(seconds=1)) == [key]
    with pytest.raises(StorageFull):
        await store.reserve(key, 0, 1001)
    await store.reserve(key, 0, 1000)
    await store.discard_tail(key, 0)  # cutting back releases the reservation, as ftruncate does
    other = await store.create(OTHER_ID, 900)
    assert await store.size(other) == 0


async def test_create_never_overwrites_an_existing_upload(backend: Backend) -> None:
    key = await _stored(backend.store, UPLOAD_ID, b"precious")
    with pytest.raises(StorageError):
        await backend.store.create(UPLOAD_ID)
    assert await _content(backend.store, key) == b"precious"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 600 * KiB),
        (1, 600 * KiB - 1),
        (100_000, 400_001),
        (256 * KiB - 1, 256 * KiB + 1),
        (600 * KiB - 1, 600 * KiB),
        (300, 300),
    ],
)
async def test_read_returns_exact_ranges_in_bounded_pieces(
    backend: Backend, start: int, end: int
) -> None:
    data = _random_bytes(600 * KiB)
    key = await _stored(backend.store, UPLOAD_ID, data)
    pieces = await _read_all(backend.store, key, start, end)
    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(piece) <= MiB for piece in pieces)
    if end - start == 600 * KiB:
        assert len(pieces) > 1, "a large read must stream, not load the whole file"


async def test_read_past_the_stored_bytes_raises(backend: Backend) -> None:
    key = await _stored(backend.store, UPLOAD_ID, b"short")
    with pytest.raises(StorageError):
        await _read_all(backend.store, key, 0, 6)


async def test_uploads_are_independent(backend: Backend) -> None:
    key = await _stored(backend.store, UPLOAD_ID, b"one")
    other = await _stored(backend.store, OTHER_ID, b"other")
    await backend.store.delete(key)
    assert await _content(backend.store, other) == b"other"


async def test_missing_upload_raises_not_found(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(NotFound):
        await store.append(MISSING, 0)
    with pytest.raises(NotFound):
        await store.size(MISSING)
    with pytest.raises(NotFound):
        await _read_all(store, MISSING, 0, 0)
    with pytest.raises(NotFound):
        await capable(backend, TailDiscarder).discard_tail(MISSING, 0)


async def test_stored_before_lists_uploads_by_their_last_change(backend: Backend) -> None:
    store = backend.store
    lister = capable(backend, OrphanLister)
    before = datetime.now(UTC) - timedelta(hours=1)
    key = await store.create(UPLOAD_ID)
    other = await store.create("f" * 32)
    after = datetime.now(UTC) + timedelta(hours=1)
    assert await lister.stored_before(before) == []
    listed = {found.upload_id: found for found in await lister.stored_before(after)}
    assert sorted(listed) == sorted([key.upload_id, other.upload_id])
    await store.delete(listed[other.upload_id])  # what the sweep does: delete by the listed key
    assert [found.upload_id for found in await lister.stored_before(after)] == [key.upload_id]
    with pytest.raises(NotFound):
        await store.size(other)  # gone, as its own key sees it
    if backend.root is not None:  # files that cannot be uploads are never listed
        (backend.root / "notes.txt").write_text("not an upload")
        (backend.root / ("A" * 32)).write_text("not an id either")
        assert await lister.stored_before(after) == [key]


async def test_delete_is_idempotent(backend: Backend) -> None:
    store = backend.store
    key = await _stored(store, UPLOAD_ID, b"bytes")
    await store.delete(key)
    with pytest.raises(NotFound):
        await store.size(key)
    await store.delete(key)
    await store.delete(MISSING)  # never created
    with pytest.raises(NotFound):
        await store.size(MISSING)


def _tree(directory: Path, skip: Path | None) -> dict[str, bytes | None]:
    """Every path under ``directory`` (but ``skip``) with the content of files."""
    result: dict[str, bytes | None] = {}
    for path in sorted(directory.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        result[str(path)] = path.read_bytes() if path.is_file() else None
    return result


@pytest.mark.parametrize("bad_id", MALFORMED_IDS)
async def test_malformed_ids_raise_not_found_and_touch_nothing_outside_the_root(
    backend: Backend, tmp_path: Path, bad_id: str
) -> None:
    store = backend.store
    (tmp_path / "x").write_bytes(b"sentinel")
    (tmp_path / ("a" * 29)).write_bytes(b"sentinel")
    key = await store.create(UPLOAD_ID)  # the root exists and holds a real upload
    before = _tree(tmp_path, backend.root)

    with pytest.raises(NotFound):
        await store.create(bad_id)
    with pytest.raises(NotFound):
        await store.append(StorageKey(bad_id), 0)
    with pytest.raises(NotFound):
        await store.size(StorageKey(bad_id))
    with pytest.raises(NotFound):
        await _read_all(store, StorageKey(bad_id), 0, 0)
    with pytest.raises(NotFound):
        await store.delete(StorageKey(bad_id))

    assert _tree(tmp_path, backend.root) == before
    if backend.root is not None:
        assert sorted(path.name for path in backend.root.iterdir()) == [UPLOAD_ID]
    assert await store.size(key) == 0
    with pytest.raises(NotFound):
        await capable(backend, TailDiscarder).discard_tail(StorageKey(bad_id), 0)


async def test_hashers_see_every_written_byte_in_order(backend: Backend) -> None:
    data = _random_bytes(300 * KiB)
    key = await _stored(backend.store, UPLOAD_ID, b"head")
    hasher = hashlib.sha256()
    appender = await backend.store.append(key, 4, [hasher])
    try:
        for start in range(0, len(data), 1000):
            await appender.write(data[start : start + 1000])
        assert await appender.sync() == 4 + len(data)
    finally:
        await appender.aclose()
    assert hasher.digest() == hashlib.sha256(data).digest()


async def test_settle_feeds_the_hashers_before_anything_is_synced(backend: Backend) -> None:
    """The handler checks a request's digest after ``settle`` and only then syncs."""
    data = _random_bytes(300 * KiB + 3)
    key = await _stored(backend.store, UPLOAD_ID, b"head")
    hasher = hashlib.sha1()
    appender = await backend.store.append(key, 4, [hasher])
    try:
        for start in range(0, len(data), 7000):
            await appender.write(data[start : start + 7000])
        await appender.settle()
        assert hasher.digest() == hashlib.sha1(data).digest()
        assert appender.offset == 4 + len(data)
    finally:
        await appender.aclose()
    resumed = await backend.store.append(key, 4)  # never synced, never committed: not kept
    await resumed.aclose()
    assert await _content(backend.store, key) == b"head"


class Switch:
    lost = False


async def test_no_byte_reaches_the_medium_once_the_fence_is_lost(backend: Backend) -> None:
    """A holder that lost its lock writes nothing more. What it accepted before may have reached
    the medium already (a store may write at once); nothing accepted after ever does."""
    key = await _stored(backend.store, UPLOAD_ID, b"head")
    fence = Switch()
    before = b"accepted before the lock was lost"
    appender = await backend.store.append(key, 4, fence=fence)
    try:
        await appender.write(b"kept")
        assert await appender.sync() == 8
        await appender.write(before)
        fence.lost = True

        async def write_and_sync() -> None:  # the refusal may surface from either
            await appender.write(b"AFTER")
            await appender.sync()

        with pytest.raises(StorageError, match="lock"):
            await write_and_sync()
        with contextlib.suppress(StorageError):
            await appender.write(b"AFTER")
        try:
            durable = await appender.sync()
        except StorageError:  # a write that failed in the background surfaces once
            durable = await appender.sync()
    finally:
        await appender.aclose()
    content = await _content(backend.store, key)
    assert content[:8] == b"headkept"
    assert content == b"headkept" + before[: len(content) - 8]  # a prefix, never AFTER
    assert durable == len(content)


async def test_digest_hashes_the_stored_bytes(backend: Backend) -> None:
    data = _random_bytes(3 * MiB + 17)
    key = await _stored(backend.store, UPLOAD_ID, data)
    digester = capable(backend, Digester)
    digest = await digester.digest(key, hashlib.sha256())
    assert digest == hashlib.sha256(data).digest()
    with pytest.raises(NotFound):
        await digester.digest(MISSING, hashlib.sha256())


async def test_concatenate_joins_parts_in_order(backend: Backend) -> None:
    store = backend.store
    joiner = capable(backend, Concatenator)
    first = await _stored(store, "1" * 32, b"alpha-")
    second = await _stored(store, "2" * 32, _random_bytes(200 * KiB))
    third = await _stored(store, "3" * 32, b"")
    key = await store.create(UPLOAD_ID)
    length = await joiner.concatenate(key, [second, first, third, first])
    expected = _random_bytes(200 * KiB) + b"alpha-alpha-"
    assert length == len(expected)
    assert await _content(store, key) == expected
    assert await _content(store, first) == b"alpha-"  # parts are left as they were
    with pytest.raises(NotFound):
        await joiner.concatenate(key, [first, MISSING])
    with pytest.raises(NotFound):
        await joiner.concatenate(key, [first, StorageKey("../x")])


async def test_finals_of_shared_parts_are_copies_that_outlive_the_parts(backend: Backend) -> None:
    """Two finals from overlapping parts (A+B, C+B): each holds its own bytes, the parts are
    left readable (concatenate neither moves nor deletes them), and deleting a shared part, or
    every part, leaves both finals whole."""
    store = backend.store
    joiner = capable(backend, Concatenator)
    a = await _stored(store, "a" * 32, _random_bytes(150 * KiB, seed=1))
    b = await _stored(store, "b" * 32, _random_bytes(70 * KiB + 3, seed=2))
    c = await _stored(store, "c" * 32, b"c-bytes")
    first, second = await store.create("1" * 32), await store.create("2" * 32)
    first_bytes = _random_bytes(150 * KiB, seed=1) + _random_bytes(70 * KiB + 3, seed=2)
    second_bytes = b"c-bytes" + _random_bytes(70 * KiB + 3, seed=2)
    assert await joiner.concatenate(first, [a, b]) == len(first_bytes)
    assert await joiner.concatenate(second, [c, b]) == len(second_bytes)
    assert await _content(store, b) == _random_bytes(70 * KiB + 3, seed=2)
    await store.delete(b)
    with pytest.raises(NotFound):
        await store.size(b)
    assert await _content(store, first) == first_bytes
    assert await _content(store, second) == second_bytes
    for part in (a, c):
        await store.delete(part)
    assert await _content(store, first) == first_bytes
    assert await _content(store, second) == second_bytes


async def test_a_key_without_its_ref_names_no_unfinished_upload(backend: Backend) -> None:
    """A store whose keys carry a ref finds an unfinished upload by that ref: the id alone, without
    the ref ``create`` returned, names no data (``NotFound``), never an upload the store guessed."""
    store = backend.store
    data = b"unfinished"
    key = await _stored(store, UPLOAD_ID, data)
    if not key.ref:
        pytest.skip(f"{backend.name}'s keys carry no ref: the id is the whole key")
    bare = StorageKey(UPLOAD_ID)
    with pytest.raises(NotFound):
        await store.size(bare)
    with pytest.raises(NotFound):
        await store.append(bare, 0)
    with pytest.raises(NotFound):
        await _read_all(store, bare, 0, 0)
    if isinstance(store, TailDiscarder):
        with pytest.raises(NotFound):
            await store.discard_tail(bare, 0)
    if isinstance(store, Digester):
        with pytest.raises(NotFound):
            await store.digest(bare, hashlib.sha256())
    if isinstance(store, Finisher):
        with pytest.raises(NotFound):
            await store.finish(bare, len(data))
    if isinstance(store, Concatenator):
        final = await store.create(OTHER_ID)
        with pytest.raises(NotFound):  # as a part
            await store.concatenate(final, [bare])
        with pytest.raises(NotFound):  # as the final upload
            await store.concatenate(StorageKey(OTHER_ID), [key])
        assert await store.size(final) == 0
    assert await _content(store, key) == data  # untouched, and found by its key


async def test_check_passes(backend: Backend) -> None:
    await backend.store.check()


async def test_a_failed_write_is_not_counted_by_sync(backend: Backend) -> None:
    store = backend.store
    key = await _stored(store, UPLOAD_ID, b"committed")
    appender = await store.append(key, 9)
    try:
        await appender.write(b"-durable")
        assert await appender.sync() == 17
        repair = backend.break_writes(UPLOAD_ID)
        _error, durable = await _failed_write(appender, _random_bytes(100 * KiB))
        assert durable == 17
    finally:
        await appender.aclose()
    repair()
    assert (await _content(store, key))[:17] == b"committed-durable"
    # The next request resumes at the durable offset and cuts whatever the failure left.
    resumed = await store.append(key, 17)
    try:
        await resumed.write(b"!")
        assert await resumed.sync() == 18
    finally:
        await resumed.aclose()
    assert await _content(store, key) == b"committed-durable!"


async def test_after_a_transient_failure_sync_reports_a_true_prefix(backend: Backend) -> None:
    """The medium fails, the caller stops writing, the medium recovers before the final ``sync``:
    whatever ``sync`` then reports must be exactly the bytes sent, with no gap inside."""
    store = backend.store
    key = await store.create(UPLOAD_ID)
    sent = b""
    appender = await store.append(key, 0)
    try:
        repair = backend.break_writes(UPLOAD_ID)
        failed = False
        for number in range(64):  # a handler stops at the first error, as here
            piece = _random_bytes(100 * KiB, seed=number)
            sent += piece
            try:
                await appender.write(piece)
            except StorageError:
                failed = True
                break
        if not failed:
            with pytest.raises(StorageError):
                await appender.sync()
        repair()
        try:
            durable = await appender.sync()
        except StorageError:
            durable = await appender.sync()
    finally:
        await appender.aclose()
    assert durable <= len(sent)
    assert (await _content(store, key))[:durable] == sent[:durable]


# -- LocalStore only -------------------------------------------------------------------------------


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalStore]:
    store = LocalStore(tmp_path / "store", buffer_size=64 * KiB)
    try:
        yield store
    finally:
        await store.aclose()


async def test_local_uploads_share_a_bounded_pool_of_writer_threads(tmp_path: Path) -> None:
    """Four uploads, each with two digests, through one pool thread: every upload's bytes and
    digests come out in order, nobody waits for ever, and no other writer thread appears."""
    store = LocalStore(tmp_path / "store", buffer_size=64 * KiB, write_threads=1)
    ids = [f"{number:032x}" for number in range(1, 5)]
    sources = {upload_id: _random_bytes(700 * KiB + number) for number, upload_id in enumerate(ids)}
    digests = {upload_id: (hashlib.sha256(), hashlib.sha1()) for upload_id in ids}
    try:
        appenders = {}
        keys = {}
        for upload_id in ids:
            keys[upload_id] = await store.create(upload_id)
            appenders[upload_id] = await store.append(keys[upload_id], 0, digests[upload_id])
        for start in range(0, 701 * KiB, 50 * KiB):  # interleaved, as concurrent requests are
            for upload_id in ids:
                await appenders[upload_id].write(sources[upload_id][start : start + 50 * KiB])
        writers = [t for t in threading.enumerate() if t.name.startswith("upload-writer")]
        assert len(writers) == 1
        for upload_id in ids:
            assert await appenders[upload_id].sync() == len(sources[upload_id])
            await appenders[upload_id].aclose()
    finally:
        await store.aclose()
    for upload_id in ids:
        data = sources[upload_id]
        assert await _content(store, keys[upload_id]) == data
        whole, request = digests[upload_id]
        assert whole.digest() == hashlib.sha256(data).digest()
        assert request.digest() == hashlib.sha1(data).digest()
    assert not any(t.name.startswith("upload-writer") for t in threading.enumerate())


class _PriorityProbe:
    """A digest that notes the nice value of the thread that feeds it."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self.seen.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    def digest(self) -> bytes:
        return b""


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
@pytest.mark.parametrize("nice", [LocalStore.WRITER_NICE, 0])
async def test_local_writer_threads_yield_the_cpu_to_the_event_loop(
    tmp_path: Path, nice: int
) -> None:
    """Writes and digests run at a higher nice value than the event loop's thread, which keeps
    its own; ``writer_nice=0`` leaves the writers alone."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    store = LocalStore(tmp_path / "store", buffer_size=64 * KiB, writer_nice=nice)
    probe = _PriorityProbe()
    try:
        key = await store.create(UPLOAD_ID)
        appender = await store.append(key, 0, (probe,))
        try:
            for _ in range(4):
                await appender.write(b"v" * 64 * KiB)
            assert await appender.sync() == 256 * KiB
        finally:
            await appender.aclose()
    finally:
        await store.aclose()
    assert probe.seen == {min(19, own + nice)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


@pytest.mark.parametrize("max_age", [0.0, 3600.0])
async def test_local_a_slow_uploads_buffer_is_written_out_by_age(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch, max_age: float
) -> None:
    """Memory per upload follows its rate: a buffer older than ``MAX_BUFFER_AGE`` goes to the
    disk with the next piece, full or not; a young one waits until it is full."""
    monkeypatch.setattr(LocalAppender, "MAX_BUFFER_AGE", max_age)
    key = await local.create(UPLOAD_ID)
    appender = await local.append(key, 0)
    try:
        for piece in (b"a" * 100, b"b" * 100, b"c" * 100):
            await appender.write(piece)
        await appender._drain()  # the writes handed out so far have ended; nothing is synced
        written = (await anyio.Path(local.path(UPLOAD_ID)).stat()).st_size
        assert written == (300 if max_age == 0 else 0)
        assert await appender.sync() == 300
    finally:
        await appender.aclose()
    assert await _content(local, key) == b"a" * 100 + b"b" * 100 + b"c" * 100


async def test_local_bytes_written_before_a_failure_stay_durable_and_the_rest_is_not_counted(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OS takes half of a buffer, then the disk fails: ``sync`` never reports more than the
    bytes that reached the file, and what it reports reads back exactly."""
    key = await local.create(UPLOAD_ID)
    appender = await local.append(key, 0)
    data = _random_bytes(200 * KiB)
    try:
        await appender.write(b"x" * 10)
        assert await appender.sync() == 10
        # The OS takes half of the next write, then the disk fails.
        DiskFaults(monkeypatch, local.path(UPLOAD_ID), errno.EIO, allow=50 * KiB)
        error, durable = await _failed_write(appender, data)
        assert "Input/output error" in error.message
        monkeypatch.undo()
        on_disk = local.path(UPLOAD_ID).stat().st_size
        assert 10 <= durable <= on_disk
        assert durable < 10 + len(data)
        assert durable == 10 + 50 * KiB  # exactly the prefix the OS took
    finally:
        await appender.aclose()
    assert (await _content(local, key))[:durable] == (b"x" * 10 + data)[:durable]


async def test_local_enospc_is_reported_as_storage_full(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await local.create(UPLOAD_ID)
    appender = await local.append(key, 0)
    try:
        DiskFaults(monkeypatch, local.path(UPLOAD_ID), errno.ENOSPC)
        error, durable = await _failed_write(appender, _random_bytes(100 * KiB))
    finally:
        await appender.aclose()
    assert isinstance(error, StorageError)
    assert error.status == 507
    assert "storage is full" in error.message
    assert durable == 0


async def test_local_read_failures_are_storage_errors(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _random_bytes(600 * KiB)
    key = await _stored(local, UPLOAD_ID, data)
    real_pread = os.pread
    calls = 0

    def bad_sector(fd: int, size: int, offset: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", bad_sector)
    received: list[bytes] = []

    async def download() -> None:
        async for piece in local.read(key, 0, len(data)):
            received.append(piece)

    with pytest.raises(StorageError, match="Input/output error"):
        await download()
    assert received
    assert data.startswith(b"".join(received))


async def test_local_open_failures_on_read_are_storage_errors(local: LocalStore) -> None:
    await local.check()
    local.path(UPLOAD_ID).mkdir()  # something that is not an upload's file sits in its place
    key = StorageKey(UPLOAD_ID)  # never created; a LocalStore key is the id alone
    with pytest.raises(StorageError):
        await _read_all(local, key, 0, 1)


async def test_local_enospc_on_create_is_reported_as_storage_full(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_args: object, **_kwargs: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="storage is full"):
        await local.create(UPLOAD_ID)


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[None]:
    """Mount a private tmpfs (root only); skip where that is not allowed."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or mount is None or umount is None:
        pytest.skip("needs root and mount(8) to build a small or read-only filesystem")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield
    finally:
        subprocess.run([umount, str(path)], check=True)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write to: mode 0555, or a read-only mount for root (who
    ignores permission bits)."""
    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with _tmpfs(path, "ro,size=64k"):
        yield path


async def test_local_a_really_full_disk_is_storage_full_and_keeps_a_true_prefix(
    tmp_path: Path,
) -> None:
    root = tmp_path / "small"
    root.mkdir()
    with _tmpfs(root, "size=256k"):
        store = LocalStore(root, buffer_size=64 * KiB)
        key = await store.create(UPLOAD_ID)
        data = _random_bytes(2 * MiB)
        appender = await store.append(key, 0)
        try:
            error, durable = await _failed_write(appender, data)
        finally:
            await appender.aclose()
        assert "storage is full" in error.message
        assert 0 < durable <= 256 * KiB
        assert await _content(store, key) == data[: await store.size(key)]
        assert (await _content(store, key))[:durable] == data[:durable]
        await store.delete(key)


async def test_local_check_fails_on_a_read_only_root(read_only_dir: Path) -> None:
    with pytest.raises(StorageError):
        await LocalStore(read_only_dir).check()
    with pytest.raises(StorageError):
        await LocalStore(read_only_dir / "files").check()


async def test_local_check_fails_when_the_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="data directory"):
        await LocalStore(tmp_path / "file").check()


async def test_local_check_creates_a_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    await LocalStore(root).check()
    assert root.is_dir()


# -- S3Store only ----------------------------------------------------------------------------------


@pytest.fixture
async def s3(moto_endpoint: str) -> AsyncIterator[S3Store]:
    store, _client = await s3_store(moto_endpoint)
    try:
        yield store
    finally:
        await store.aclose()


def _s3_parts(store: S3Store, key: StorageKey) -> list[int]:
    multipart_id, _part_size = parse_ref(key.ref)
    obj = store.object_key(key)
    return [part.size for part in store.client.list_parts(store.bucket, obj, multipart_id)]


def _s3_keys(store: S3Store) -> list[str]:
    return sorted(info.key for info in store.client.list_objects(store.bucket, store.prefix))


async def _s3_write(store: S3Store, key: StorageKey, offset: int, data: bytes, sync: bool) -> int:
    """Append ``data`` at ``offset`` in 256 KiB pieces; ``sync`` or (a crash) only close."""
    appender = await store.append(key, offset)
    try:
        for start in range(0, len(data), 256 * KiB):
            await appender.write(data[start : start + 256 * KiB])
        return await appender.sync() if sync else appender.offset
    finally:
        await appender.aclose()


async def test_s3_parts_of_one_size_a_tail_and_finish(s3: S3Store) -> None:
    data = _random_bytes(2 * S3_PART + MiB + 123)
    key = await s3.create(UPLOAD_ID)
    assert key.upload_id == UPLOAD_ID
    assert key.ref
    assert await _s3_write(s3, key, 0, data, sync=True) == len(data)
    assert await anyio.to_thread.run_sync(_s3_parts, s3, key) == [S3_PART, S3_PART]
    assert await s3.size(key) == len(data)
    tail = await _read_all(s3, key, 2 * S3_PART, len(data))  # an unfinished upload: its tail
    assert b"".join(tail) == data[2 * S3_PART :]
    with pytest.raises(StorageError, match="cannot be read back"):
        await _read_all(s3, key, 0, 10)

    await s3.finish(key, len(data))
    assert await _content(s3, key) == data
    assert await s3.digest(key, hashlib.sha256()) == hashlib.sha256(data).digest()
    keys = await anyio.to_thread.run_sync(_s3_keys, s3)
    assert keys == [s3.object_key(key)]  # no tail object is left
    await s3.finish(key, len(data))  # again, as after a crash: only checks
    with pytest.raises(StorageError, match="holds"):
        await s3.finish(key, len(data) + 1)
    assert await capable_lister(s3) == []
    await s3.delete(key)
    assert await anyio.to_thread.run_sync(_s3_keys, s3) == []


async def capable_lister(store: S3Store) -> list[StorageKey]:
    return await store.stored_before(datetime.now(UTC) + timedelta(hours=1))


async def test_s3_an_upload_resumes_at_its_offset_across_appenders(s3: S3Store) -> None:
    data = _random_bytes(2 * S3_PART + 5000)
    key = await s3.create(UPLOAD_ID)
    cuts = [0, 100, S3_PART - 1, S3_PART, S3_PART + 77, 2 * S3_PART, len(data)]
    for start, end in itertools.pairwise(cuts):  # every request its own appender
        assert await _s3_write(s3, key, start, data[start:end], sync=True) == end
        assert await s3.size(key) == end
    await s3.finish(key, len(data))
    assert await _content(s3, key) == data


async def test_s3_uncommitted_parts_and_tails_are_never_part_of_the_upload(s3: S3Store) -> None:
    """kill -9 after parts went up but before the offset was committed, once before the new
    tail was written and once after: ``append`` at the committed offset resumes from it."""
    committed = _random_bytes(100, seed=1)
    key = await s3.create(UPLOAD_ID)
    assert await _s3_write(s3, key, 0, committed, sync=True) == 100
    lost = _random_bytes(S3_PART + 200, seed=2)
    # Part 1 is uploaded while the bytes stream in; the request dies before any sync.
    await _s3_write(s3, key, 100, lost, sync=False)
    assert await anyio.to_thread.run_sync(_s3_parts, s3, key) == [S3_PART]
    assert await s3.size(key) == 100  # part 1 was never synced: it does not count
    # The next request syncs (part 1 again, tail of slot 2), but its offset is never committed.
    assert await _s3_write(s3, key, 100, lost, sync=True) == 100 + len(lost)
    assert await s3.size(key) == 100 + len(lost)
    await s3.discard_tail(key, 100)  # reconciliation cuts it back
    assert await s3.size(key) == 100
    assert await _content(s3, key) == committed
    assert await _s3_write(s3, key, 100, lost, sync=True) == 100 + len(lost)  # and again
    rest = _random_bytes(S3_PART + 300, seed=3)
    assert await _s3_write(s3, key, 100, rest, sync=True) == 100 + len(rest)
    await s3.finish(key, 100 + len(rest))
    assert await _content(s3, key) == committed + rest


async def test_s3_an_empty_upload_finishes_as_an_empty_object(s3: S3Store) -> None:
    key = await s3.create(UPLOAD_ID)
    await s3.finish(key, 0)
    assert await s3.size(key) == 0
    assert await _content(s3, key) == b""
    assert await anyio.to_thread.run_sync(_s3_keys, s3) == [s3.object_key(key)]


async def test_s3_each_upload_gets_the_part_size_its_length_needs(
    s3: S3Store, moto_endpoint: str
) -> None:
    """The configured part size, raised only for an upload too long for 10,000 of them; a
    deferred length gets what the largest allowed upload needs. The key records it, so every
    later call (and every replica) cuts parts the same way."""
    store = S3Store(s3.client, s3.bucket, s3.prefix, S3_PART, max_size=200 * 1024 * MiB)
    short = await store.create(UPLOAD_ID, 12 * MiB)
    assert parse_ref(short.ref)[1] == S3_PART
    assert parse_ref((await store.create(OTHER_ID, None)).ref)[1] == 21 * MiB
    long_id = "cd" * 16
    key = await store.create(long_id, MAX_PARTS * 6 * MiB)  # 6 MiB parts
    assert parse_ref(key.ref)[1] == 6 * MiB
    data = _random_bytes(13 * MiB + 5)
    assert await _s3_write(store, key, 0, data[: 7 * MiB], sync=True) == 7 * MiB
    assert await _s3_write(store, key, 7 * MiB, data[7 * MiB :], sync=True) == len(data)
    assert await anyio.to_thread.run_sync(_s3_parts, store, key) == [6 * MiB, 6 * MiB]
    assert await store.size(key) == len(data)
    await store.finish(key, len(data))
    assert await _content(store, key) == data
    with pytest.raises(StorageError, match="larger than S3's largest object"):
        await store.create("ef" * 16, 6 * 1024 * 1024 * MiB)  # past S3's 5 TiB


async def test_s3_a_ref_without_a_part_size_takes_it_from_the_first_part(s3: S3Store) -> None:
    """Keys made before part sizes were recorded: the first part's size, else the store's."""
    key = await s3.create(UPLOAD_ID)
    multipart_id, _part_size = parse_ref(key.ref)
    bare = StorageKey(UPLOAD_ID, multipart_id)
    data = _random_bytes(S3_PART + 100)
    assert await _s3_write(s3, bare, 0, data, sync=True) == len(data)
    assert await s3.size(bare) == len(data)
    await s3.finish(bare, len(data))
    assert await _content(s3, bare) == data


async def test_s3_the_spool_holds_the_part_being_built_not_memory(
    s3: S3Store, tmp_path: Path
) -> None:
    """Memory per upload stays within the 1 MiB buffer: the rest of a part is in the spool file."""
    store = S3Store(s3.client, s3.bucket, s3.prefix, S3_PART, spool_dir=tmp_path, max_size=S3_MAX)
    key = await store.create(UPLOAD_ID)
    appender = await store.append(key, 0)
    try:
        piece = _random_bytes(64 * KiB)
        for _ in range(64):  # 4 MiB, below a part: nothing is uploaded yet
            await appender.write(piece)
            assert appender._buffered <= S3Appender.BUFFER_SIZE
        await appender.settle()
        assert appender._buffered == 0
        spool = appender._spool
        assert os.fstat(spool.fileno()).st_size == 4 * MiB  # on disk, under ``spool_dir``
        if sys.platform == "linux":
            assert os.readlink(f"/proc/self/fd/{spool.fileno()}").startswith(str(tmp_path))
        assert await appender.sync() == 4 * MiB
    finally:
        await appender.aclose()
    assert spool.closed


async def _peak_memory_of_an_upload(store: S3Store, upload_id: str, size: int) -> int:
    key = await store.create(upload_id, size)
    piece = _random_bytes(64 * KiB)
    tracemalloc.start()
    try:
        appender = await store.append(key, 0)
        try:
            for _ in range(size // len(piece)):
                await appender.write(piece)
            assert await appender.sync() == size
        finally:
            await appender.aclose()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


async def test_s3_memory_per_upload_is_bounded_whatever_the_part_size(s3: S3Store) -> None:
    """Parts and a tail stream through with a few MiB allocated at the peak: the 1 MiB buffer
    plus what botocore reads at a time of each part in flight (``concurrency`` of them), never a
    part. Twice the part size (and twice the bytes) stays within the same bound."""
    stores = [
        S3Store(s3.client, s3.bucket, s3.prefix, part, concurrency=2, max_size=S3_MAX)
        for part in (8 * MiB, 16 * MiB)
    ]
    try:
        small = await _peak_memory_of_an_upload(stores[0], UPLOAD_ID, 2 * 8 * MiB + 2 * MiB)
        large = await _peak_memory_of_an_upload(stores[1], OTHER_ID, 2 * 16 * MiB + 2 * MiB)
    finally:
        for store in stores:
            await store.aclose()
    bound = S3Appender.BUFFER_SIZE + 2 * 2 * MiB  # the buffer, two parts in flight
    assert bound < 8 * MiB  # so neither upload ever held a part (of 8 or of 16 MiB)
    assert small < bound, (small, bound)
    assert large < bound, (large, bound)
    print(f"peak allocated: {small} bytes (8 MiB parts), {large} bytes (16 MiB parts)")


def test_s3_part_size_keeps_every_upload_within_10000_parts() -> None:
    assert choose_part_size(10 * MiB) == 5 * MiB
    assert choose_part_size(10 * MiB, 8 * MiB) == 8 * MiB
    for max_size in (48 * 1024 * MiB, 100 * 1024 * MiB, 1024**4, 5 * 1024**4):
        size = choose_part_size(max_size)
        assert size % MiB == 0
        assert size * MAX_PARTS >= max_size
        assert (size - MiB) * MAX_PARTS < max_size
    for too_large in (5 * 1024**4 + 1, 50 * 1024**4):  # past S3's largest object
        with pytest.raises(ValueError, match="larger than S3's largest object"):
            choose_part_size(too_large)
    with pytest.raises(ValueError, match="5 MiB"):
        choose_part_size(MiB, MiB)
    with pytest.raises(ValueError, match="5 MiB"):
        S3Store(cast(ObjectClient, None), "bucket", part_size=MiB)


async def test_s3_list_parts_reads_every_page(moto_endpoint: str) -> None:
    """More than 1,000 parts: ListParts comes in pages, and every one is read."""
    bucket = await anyio.to_thread.run_sync(moto.new_bucket, moto_endpoint)
    client = moto.client(moto_endpoint)

    def upload_many() -> list[int]:
        upload_id = client.create_multipart_upload(bucket, "many")

        def upload(number: int) -> Part:
            return client.upload_part(bucket, "many", upload_id, number, io.BytesIO(b"x"), 1)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(upload, range(1, 1003)))
        return [part.number for part in client.list_parts(bucket, "many", upload_id)]

    assert await anyio.to_thread.run_sync(upload_many) == list(range(1, 1003))


async def test_s3_an_unreachable_endpoint_is_unavailable_with_retry_after() -> None:
    store = S3Store(moto.client(f"http://127.0.0.1:{_closed_port()}", max_attempts=1), "bucket")
    key = StorageKey(UPLOAD_ID, "upload-id")  # as a row keeps it: create cannot reach S3 either
    for attempt in (store.check(), store.create(UPLOAD_ID), store.size(key)):
        with pytest.raises(StorageUnavailable) as caught:
            await attempt
        assert isinstance(caught.value, StorageError)
        assert caught.value.status == 503
        assert caught.value.headers["Retry-After"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_s3_errors_are_translated(s3: S3Store, moto_endpoint: str) -> None:
    with pytest.raises(NotFound):
        await s3.size(StorageKey(UPLOAD_ID, "no-such-upload"))
    missing = S3Store(moto.client(moto_endpoint), "no-such-bucket")
    with pytest.raises(StorageError) as caught:
        await missing.check()
    assert not isinstance(caught.value, NotFound)
    for code, status, expected in [
        ("SlowDown", 503, StorageUnavailable),
        ("InternalError", 500, StorageUnavailable),
        ("NoSuchUpload", 404, NotFound),
        ("NoSuchKey", 404, NotFound),
        ("AccessDenied", 403, StorageError),
        ("EntityTooSmall", 400, StorageError),
    ]:
        response = {
            "Error": {"Code": code, "Message": code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        error = botocore.exceptions.ClientError(cast(Any, response), "UploadPart")
        translated = translate(error, "write upload data")
        assert type(translated) is expected, code


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("XMinioStorageFull", 507),  # MinIO: no drive has room
        ("XMinioAdminBucketQuotaExceeded", 400),  # MinIO: the bucket's quota
        ("QuotaExceeded", 403),  # Ceph RGW
        ("EntityTooLarge", 400),  # never sent past S3's limits: a quota said so
        ("", 507),
    ],
)
def test_s3_no_space_or_quota_is_storage_full(code: str, status: int) -> None:
    response = {
        "Error": {"Code": code, "Message": "no room"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error = botocore.exceptions.ClientError(cast(Any, response), "UploadPart")
    translated = translate(error, "write upload data")
    assert type(translated) is StorageFull
    assert translated.status == 507
    assert translated.message.startswith("cannot write upload data: object storage is full")
    assert "\n" not in translated.message


class _FullSpool(io.BytesIO):
    def write(self, data: Any, /) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_s3_a_full_spool_disk_is_a_storage_error(s3: S3Store) -> None:
    key = await s3.create(UPLOAD_ID)
    assert await _s3_write(s3, key, 0, b"kept", sync=True) == 4
    appender = await s3.append(key, 4)
    try:
        appender._spool.close()
        appender._spool = _FullSpool()  # the local disk the part is spooled to is full
        error, durable = await _failed_write(appender, _random_bytes(2 * MiB))
    finally:
        await appender.aclose()
    assert "No space left" in error.message
    assert isinstance(error, StorageFull)
    assert durable == 4
    assert await _content(s3, key) == b"kept"


async def test_s3_concatenation_copies_parts_of_one_size(s3: S3Store) -> None:
    """Partial uploads of any sizes become parts of exactly the part size: copied by the server
    where a part lies in one source, spooled where it spans several; a second run (after a
    crash) only checks the object."""
    sizes = [3 * MiB, 4 * MiB + 5, 0, 6 * MiB]
    sources = [_random_bytes(size, seed=number) for number, size in enumerate(sizes)]
    keys = []
    for number, data in enumerate(sources):
        key = await s3.create(f"{number + 1:032x}")
        await _s3_write(s3, key, 0, data, sync=True)
        await s3.finish(key, len(data))
        keys.append(key)
    final = await s3.create(UPLOAD_ID)
    copies: list[tuple[int, int]] = []
    real = s3.client.upload_part_copy

    def spy(*args: Any) -> Part:
        copies.append((args[-2], args[-1]))
        return real(*args)

    s3.client = cast(Any, _Spy(s3.client, upload_part_copy=spy))
    expected = b"".join(sources)
    assert await s3.concatenate(final, keys) == len(expected)
    assert copies == [(S3_PART * 2 - (7 * MiB + 5), 6 * MiB)]  # the last part, inside one source
    assert await _content(s3, final) == expected
    assert await s3.concatenate(final, keys) == len(expected)
    assert await _content(s3, keys[1]) == sources[1]  # the parts are left as they were
    assert await anyio.to_thread.run_sync(_s3_keys, s3) == sorted(
        s3.object_key(key) for key in [*keys, final]
    )


class _Spy:
    def __init__(self, real: object, **replaced: Any) -> None:
        self._real = real
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced.get(name) or getattr(self._real, name)


async def test_s3_a_key_without_a_ref_is_never_searched_for(s3: S3Store) -> None:
    """The id alone names a finished object (found by its object key: it needs no ref) and no
    multipart upload: no call but ``create`` lists multipart uploads, and ``delete`` of such a
    key removes the object and the tails only."""
    data = _random_bytes(1000)
    unfinished = await _stored(s3, UPLOAD_ID, data)
    finished = await _stored(s3, OTHER_ID, data)
    await s3.finish(finished, len(data))
    listings: list[tuple[Any, ...]] = []
    real = s3.client

    def listing(*args: Any) -> Any:
        listings.append(args)
        return real.list_multipart_uploads(*args)

    s3.client = cast(Any, _Spy(real, list_multipart_uploads=listing))
    done = StorageKey(OTHER_ID)
    assert await s3.size(done) == len(data)
    assert await _content(s3, done) == data
    assert await s3.digest(done, hashlib.sha256()) == hashlib.sha256(data).digest()
    await s3.finish(done, len(data))  # again, as after a crash: only checks
    await s3.delete(done)
    with pytest.raises(NotFound):
        await s3.size(finished)

    bare = StorageKey(UPLOAD_ID)
    with pytest.raises(NotFound, match="missing"):
        await s3.size(bare)
    await s3.delete(bare)  # no ref: no multipart upload to abort, only the objects
    assert listings == []
    s3.client = real
    assert await anyio.to_thread.run_sync(_s3_keys, s3) == []  # the tail is gone
    listed = await capable_lister(s3)  # the multipart upload is not
    assert [(key.upload_id, parse_ref(key.ref)[0]) for key in listed] == [
        (unfinished.upload_id, parse_ref(unfinished.ref)[0])
    ]
    await s3.delete(unfinished)
    assert await capable_lister(s3) == []


async def test_s3_sync_never_reports_a_slot_whose_tail_failed(s3: S3Store) -> None:
    """Part 2 went up, then writing its slot's tail failed: ``sync`` reports the last synced
    offset, which is what ``size`` shows after a restart (never more)."""
    client = FaultyClient(s3.client)
    store = S3Store(client, s3.bucket, s3.prefix, S3_PART, max_size=S3_MAX)
    key = await store.create(UPLOAD_ID)
    assert await _s3_write(store, key, 0, b"x" * 10, sync=True) == 10
    appender = await store.append(key, 10)
    try:
        await appender.write(_random_bytes(S3_PART + MiB))  # part 1 goes up at once
        await appender.settle()
        client.broken = True  # now the tail of slot 2 cannot be written
        with pytest.raises(StorageUnavailable):
            await appender.sync()
        assert await appender.sync() == 10
    finally:
        await appender.aclose()
    client.broken = False
    assert await store.size(key) == 10
