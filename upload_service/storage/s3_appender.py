"""The appender of ``S3Store`` (the layout and the crash story are in ``storage/s3.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from upload_service.errors import StorageError
from upload_service.storage.base import Fence, Hasher

if TYPE_CHECKING:
    from upload_service.storage.s3 import S3Store

MiB = 1024 * 1024
MAX_PARTS = 10_000  # S3's part numbers are 1..10,000
_FENCED = "the upload's lock was lost (a newer request owns it)"


class S3Appender:
    """Buffers up to ``BUFFER_SIZE`` bytes, then (in a worker thread) hashes them, spools them
    and uploads every part that fills up; ``sync`` also writes the spooled rest as the tail."""

    BUFFER_SIZE = MiB

    def __init__(
        self,
        store: S3Store,
        obj: str,
        upload_id: str,
        part_size: int,
        offset: int,
        spool: IO[bytes],
        tail_object: int,
        hashers: Sequence[Hasher],
        fence: Fence | None,
    ) -> None:
        self._store = store
        self._obj = obj
        self._upload_id = upload_id
        self._part_size = part_size
        self._parts, spooled = divmod(offset, part_size)  # durable full parts
        self._spool = spool  # the bytes of slot ``parts + 1``
        self._spooled = spooled
        self._slot_durable = spooled  # of them, durable in the slot's tail object
        self._tail_object = tail_object  # that object's size (-1: none)
        self._start = offset
        # What the store's size reports after a crash: a slot counts once its tail is written.
        self._synced = offset
        self._accepted = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._hashers = tuple(hashers)
        self._fence = fence
        self._failed = False

    @property
    def offset(self) -> int:
        return self._start + self._accepted

    def _durable(self) -> int:
        return self._synced

    def _fenced_off(self) -> bool:
        return self._fence is not None and self._fence.lost

    async def write(self, data: bytes) -> None:
        if self._failed:
            raise StorageError("cannot write upload data: an earlier write failed")
        if self._fenced_off():
            self._fail()
            raise StorageError(f"cannot write upload data: {_FENCED}")
        self._chunks.append(data)
        self._buffered += len(data)
        self._accepted += len(data)
        if self._buffered >= self.BUFFER_SIZE:
            await self._flush()

    def _fail(self) -> None:
        self._failed = True
        self._chunks, self._buffered = [], 0

    async def _flush(self) -> None:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if not chunks:
            return
        try:
            await self._store.run(self._absorb, chunks)
        except StorageError:
            self._fail()
            raise

    async def settle(self) -> None:
        if self._failed:
            raise StorageError("cannot write upload data: an earlier write failed")
        await self._flush()

    async def sync(self) -> int:
        if self._failed:
            return self._durable()  # the failure was raised by the call that met it
        try:
            await self._flush()
            await self._store.run(self._write_tail)
        except StorageError:
            self._fail()
            raise
        return self._durable()

    async def aclose(self) -> None:
        self._chunks, self._buffered = [], 0
        with contextlib.suppress(StorageError):  # nothing unsynced was ever reported
            await self._store.run(self._spool.close)

    # -- in the worker thread ---------------------------------------------------------------------

    def _absorb(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            for hasher in self._hashers:
                hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                piece = view[: self._part_size - self._spooled]
                self._spool.seek(self._spooled)
                self._spool.write(piece)
                self._spooled += len(piece)
                view = view[len(piece) :]
                if self._spooled == self._part_size:
                    self._upload_part()

    def _check_fence(self) -> None:
        if self._fenced_off():  # right before bytes go out
            raise StorageError(f"cannot write upload data: {_FENCED}")

    def _upload_part(self) -> None:
        self._check_fence()
        number = self._parts + 1
        if number > MAX_PARTS:
            raise StorageError(f"the upload needs more than {MAX_PARTS} parts of its size")
        self._spool.flush()
        self._spool.seek(0)
        store = self._store
        store.client.upload_part(
            store.bucket, self._obj, self._upload_id, number, self._spool, self._part_size
        )
        self._parts = number
        self._spool.seek(0)
        self._spool.truncate()
        self._spooled = self._slot_durable = 0
        self._tail_object = -1  # the new slot has no tail yet: the next sync writes one

    def _write_tail(self) -> None:
        if self._spooled == self._slot_durable == self._tail_object:
            self._synced = self._parts * self._part_size + self._spooled
            return  # the slot's tail object holds exactly the spooled bytes
        self._check_fence()
        store = self._store
        key = store.tail_key(self._obj, self._parts + 1)
        self._spool.flush()
        self._spool.seek(0)
        store.client.put_object(store.bucket, key, self._spool, self._spooled)
        self._slot_durable = self._tail_object = self._spooled
        self._synced = self._parts * self._part_size + self._spooled
