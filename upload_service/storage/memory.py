"""An in-memory store: the reference double for handler tests and the contract suite.

It models durability honestly: written bytes become durable only on ``sync``, and ``crash`` drops
everything not synced, as a kill -9 plus power loss would. With a ``capacity`` it models a small
disk's reservations as well (``Reserver``): what uploads hold or have reserved counts against it,
and cutting an upload's bytes back releases its reservation, as ``ftruncate`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from upload_service.errors import NotFound, StorageError, StorageFull
from upload_service.storage.base import Fence, Hasher, StorageKey, check_upload_id


class MemoryAppender:
    def __init__(
        self,
        store: MemoryStore,
        upload_id: str,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> None:
        self._fence = fence
        self._store = store
        self._hashers = tuple(hashers)
        self._id = upload_id
        self._offset = offset

    @property
    def offset(self) -> int:
        return self._offset

    async def write(self, data: bytes) -> None:
        if self._store.fail_writes:
            raise StorageError("cannot write upload data: storage is full")
        if self._fence is not None and self._fence.lost:
            raise StorageError("cannot write upload data: the upload's lock was lost")
        for hasher in self._hashers:
            hasher.update(data)
        self._store.volatile[self._id] += data
        self._store.changed[self._id] = datetime.now(UTC)
        self._offset += len(data)

    async def settle(self) -> None:
        return None

    async def sync(self) -> int:
        self._store.durable[self._id] = bytearray(self._store.volatile[self._id])
        return len(self._store.durable[self._id])

    async def aclose(self) -> None:
        return None


class MemoryStore:
    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity  # bytes uploads may hold and reserve together; None: unbounded
        self.reserved: dict[str, int] = {}  # upload id -> end of its reservation
        self.volatile: dict[str, bytearray] = {}
        self.durable: dict[str, bytearray] = {}
        self.changed: dict[str, datetime] = {}  # when each upload's bytes last changed
        self.fail_writes = False

    def _get(self, key: StorageKey | str) -> bytearray:
        upload_id = key if isinstance(key, str) else key.upload_id
        try:
            return self.volatile[check_upload_id(upload_id)]
        except KeyError:
            raise NotFound("upload data is missing") from None

    def crash(self) -> None:
        self.volatile = {key: bytearray(value) for key, value in self.durable.items()}

    async def create(self, upload_id: str, length: int | None = None) -> StorageKey:
        if check_upload_id(upload_id) in self.volatile:
            raise StorageError("cannot create upload: it already exists")  # as O_EXCL does
        self.volatile[upload_id] = bytearray()
        self.durable[upload_id] = bytearray()
        self.changed[upload_id] = datetime.now(UTC)
        if length:
            try:
                await self.reserve(StorageKey(upload_id), 0, length)
            except StorageFull:
                await self.delete(StorageKey(upload_id))
                raise
        return StorageKey(upload_id)

    def used(self) -> int:
        """Bytes held or reserved by every upload."""
        return sum(
            max(len(data), self.reserved.get(upload_id, 0))
            for upload_id, data in self.volatile.items()
        )

    async def reserve(self, key: StorageKey, start: int, end: int) -> None:
        held = max(len(self._get(key)), self.reserved.get(key.upload_id, 0))
        if self.capacity is None or end <= held:
            return
        if self.used() + end - held > self.capacity:
            raise StorageFull("cannot reserve space for the upload: storage is full")
        self.reserved[key.upload_id] = end

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> MemoryAppender:
        data = self._get(key)
        if len(data) < offset:
            raise StorageError(f"upload data holds {len(data)} bytes, fewer than offset {offset}")
        if len(data) > offset:
            self._cut(key.upload_id, offset)
        return MemoryAppender(self, key.upload_id, offset, hashers, fence)

    async def size(self, key: StorageKey) -> int:
        return len(self._get(key))

    async def discard_tail(self, key: StorageKey, length: int) -> None:
        self._get(key)
        self._cut(key.upload_id, length)
        self.durable[key.upload_id] = bytearray(self.volatile[key.upload_id])

    def _cut(self, upload_id: str, length: int) -> None:
        del self.volatile[upload_id][length:]
        self.reserved.pop(upload_id, None)  # as ftruncate frees the blocks past the new end

    async def read(self, key: StorageKey, start: int, end: int) -> AsyncIterator[bytes]:
        data = self._get(key)
        if len(data) < end:
            raise StorageError("upload data is shorter than its offset")
        for position in range(start, end, 65536):
            yield bytes(data[position : min(position + 65536, end)])

    async def delete(self, key: StorageKey) -> None:
        self.volatile.pop(check_upload_id(key.upload_id), None)
        self.durable.pop(key.upload_id, None)
        self.changed.pop(key.upload_id, None)
        self.reserved.pop(key.upload_id, None)

    async def stored_before(self, moment: datetime) -> list[StorageKey]:
        return [
            StorageKey(upload_id)
            for upload_id in self.volatile
            if self.changed.get(upload_id, moment) < moment
        ]

    async def digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        hasher.update(bytes(self._get(key)))
        return hasher.digest()

    async def concatenate(self, key: StorageKey, parts: Sequence[StorageKey]) -> int:
        joined = bytearray().join(self._get(part) for part in parts)
        target = self._get(key)
        target[:] = joined
        self.durable[key.upload_id] = bytearray(joined)
        return len(joined)

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
