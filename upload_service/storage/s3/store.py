"""``S3Store``: the ``Store`` of uploads as S3 multipart uploads, and its capabilities.

Each step's crash story is in its module (``appender``, ``concat``, ``recovery``, ``bucket``,
``direct`` for browsers' direct uploads; the layout in the package's docstring and ``layout``);
this one owns creation and deletion.

Crash story of ``create``: it refuses an upload whose object or multipart upload already exists,
then creates the multipart upload and writes slot 1's empty tail (the upload's bytes, none yet,
and when they last changed, readable in listings: some S3 servers report a fixed initiation time).
The caller inserts the row only after ``create`` returned, so a kill -9 before that leaves a
multipart upload no row names, which ``stored_before`` finds (a missing tail counts as old).
``delete`` aborts the multipart upload (if the key has a ref), then deletes the object and the
tails; each step is a no-op once done, so a delete killed midway just runs again. ``delete`` of a
key without a ref removes the object and the tails only. A direct upload's key (``direct:``, whose
multipart upload it aborts, or ``post:``) is deleted the same way; it has no tails, and ``append``
refuses it. Reads and digests stream in pieces (``READ_CHUNK``, 1 MiB), never holding an upload in
memory.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

from upload_service.errors import NotFound, StorageError
from upload_service.storage.base import (
    DirectPart,
    Fence,
    Hasher,
    PostPolicy,
    StorageKey,
    check_upload_id,
)
from upload_service.storage.s3 import concat, direct, recovery
from upload_service.storage.s3.appender import S3Appender, open_appender
from upload_service.storage.s3.bucket import DIRECT_REFUSAL, Bucket
from upload_service.storage.s3.client import ObjectClient
from upload_service.storage.s3.layout import (
    DIRECT,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    POST,
    KiB,
    MiB,
    choose_part_size,
    is_direct,
    parse_ref,
    tail_key,
)
from upload_service.storage.s3.workers import Workers

READ_CHUNK = 256 * KiB


def _create(bucket: Bucket, upload_id: str) -> str:
    obj = bucket.object_key(upload_id)
    bucket.refuse_existing(obj)
    ref = bucket.client.create_multipart_upload(bucket.name, obj)
    # An empty tail: the upload's bytes (none yet) and when they last changed, readable in
    # listings (some S3 servers report a fixed initiation time).
    bucket.client.put_object(bucket.name, tail_key(obj, 1), io.BytesIO(b""), 0)
    return ref


def _delete(bucket: Bucket, key: StorageKey) -> None:
    """Abort the key's multipart upload (if it has a ref), delete the object and the tails."""
    obj = bucket.object_key(key)
    upload_id, _part_size = parse_ref(key.ref)
    if upload_id:
        with contextlib.suppress(NotFound):
            bucket.client.abort_multipart_upload(bucket.name, obj, upload_id)
    bucket.client.delete_object(bucket.name, obj)
    bucket.delete_tails(obj)


def _digest(bucket: Bucket, key: StorageKey, hasher: Hasher) -> bytes:
    size = bucket.size(key)
    body = bucket.open_range(key, 0, size)
    if body is not None:
        try:
            remaining = size
            while remaining:
                chunk = body.read(min(MiB, remaining))
                if not chunk:
                    raise StorageError("upload data is shorter than its offset")
                hasher.update(chunk)
                remaining -= len(chunk)
        finally:
            body.close()
    return hasher.digest()


class S3Store:
    """``Store`` + ``Finisher``, ``Concatenator``, ``TailDiscarder``, ``Digester``,
    ``OrphanLister``, ``DirectStore`` over an ``ObjectClient``."""

    def __init__(
        self,
        client: ObjectClient,
        bucket: str,
        prefix: str = "",
        part_size: int = MIN_PART_SIZE,
        *,
        spool_dir: Path | None = None,
        threads: int = 32,
        concurrency: int = 4,
        max_size: int = MAX_OBJECT_SIZE,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"the part size must be between 5 MiB and 5 GiB, not {part_size}")
        # part_size is the smallest part size; each upload's is ``part_size_for``
        self._bucket = Bucket(client, bucket, prefix, part_size, spool_dir)
        self._workers = Workers(threads)
        self.max_size = max_size  # the largest upload allowed: sizes parts of deferred lengths
        self.concurrency = concurrency  # parts one appender uploads at the same time

    @property
    def client(self) -> ObjectClient:
        return self._bucket.client

    @client.setter
    def client(self, client: ObjectClient) -> None:
        self._bucket.client = client  # open appenders write through the new one too

    @property
    def bucket(self) -> str:
        return self._bucket.name

    @property
    def prefix(self) -> str:
        return self._bucket.prefix

    @property
    def part_size(self) -> int:
        return self._bucket.part_size

    @property
    def spool_dir(self) -> Path | None:
        return self._bucket.spool_dir

    def object_key(self, key: StorageKey | str) -> str:
        return self._bucket.object_key(key)

    def part_size_for(self, length: int | None) -> int:
        """An upload's part size: the configured one, raised (whole MiB) only as far as its
        length, or for a deferred length the largest allowed upload, needs in 10,000 parts."""
        try:
            return choose_part_size(self.max_size if length is None else length, self.part_size)
        except ValueError as exc:
            raise StorageError(f"cannot create upload: {exc}") from exc

    # -- the Store contract -----------------------------------------------------------------------

    async def create(self, upload_id: str, length: int | None = None) -> StorageKey:
        check_upload_id(upload_id)
        part_size = self.part_size_for(length)
        multipart_id = await self._workers.run(_create, self._bucket, upload_id)
        return StorageKey(upload_id, f"{part_size}:{multipart_id}")

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> S3Appender:
        if is_direct(key.ref):
            raise StorageError(DIRECT_REFUSAL)
        return await open_appender(
            self._bucket,
            self._workers,
            key,
            offset,
            hashers,
            fence=fence,
            concurrency=self.concurrency,
        )

    async def size(self, key: StorageKey) -> int:
        self.object_key(key)
        return await self._workers.run(self._bucket.size, key)

    async def read(self, key: StorageKey, start: int, end: int) -> AsyncIterator[bytes]:
        self.object_key(key)
        run = self._workers.run
        body = await run(self._bucket.open_range, key, start, end)
        if body is None:
            return
        try:
            remaining = end - start
            while remaining > 0:
                chunk = await run(body.read, min(READ_CHUNK, remaining))
                if not chunk:
                    raise StorageError("upload data is shorter than its offset")
                remaining -= len(chunk)
                yield chunk
        finally:
            await run(body.close)

    async def delete(self, key: StorageKey) -> None:
        self.object_key(key)
        await self._workers.run(_delete, self._bucket, key)

    async def check(self) -> None:
        await self._workers.run(self.client.head_bucket, self.bucket)

    async def aclose(self) -> None:
        await self._workers.aclose()

    # -- capabilities -----------------------------------------------------------------------------

    async def finish(self, key: StorageKey, length: int) -> None:
        self.object_key(key)
        await self._workers.run(concat.finish, self._bucket, key, length)

    async def concatenate(self, key: StorageKey, parts: Sequence[StorageKey]) -> int:
        self.object_key(key)
        return await self._workers.run(concat.concatenate, self._bucket, key, parts)

    async def discard_tail(self, key: StorageKey, length: int) -> None:
        self.object_key(key)
        await self._workers.run(recovery.discard_tail, self._bucket, key, length)

    async def digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        self.object_key(key)
        return await self._workers.run(_digest, self._bucket, key, hasher)

    async def stored_before(self, moment: datetime) -> list[StorageKey]:
        return await self._workers.run(recovery.stored_before, self._bucket, moment)

    # -- direct uploads (DirectStore) -------------------------------------------------------------

    async def begin_multipart(self, upload_id: str, content_type: str | None) -> StorageKey:
        check_upload_id(upload_id)
        multipart_id = await self._workers.run(
            direct.begin_multipart, self._bucket, upload_id, content_type
        )
        return StorageKey(upload_id, DIRECT + multipart_id)

    async def begin_post(
        self, upload_id: str, *, max_size: int | None, content_type: str | None, expires_in: int
    ) -> tuple[StorageKey, PostPolicy]:
        check_upload_id(upload_id)
        direct.check_expiry(expires_in)
        policy = await self._workers.run(
            direct.begin_post, self._bucket, upload_id, max_size, content_type, expires_in
        )
        return StorageKey(upload_id, POST), policy

    async def sign_part(self, key: StorageKey, number: int, expires_in: int) -> str:
        direct.check_expiry(expires_in)
        return await self._workers.run(direct.sign_part, self._bucket, key, number, expires_in)

    async def direct_parts(self, key: StorageKey) -> list[DirectPart]:
        return await self._workers.run(direct.direct_parts, self._bucket, key)

    async def finish_multipart(self, key: StorageKey, parts: Sequence[tuple[int, str]]) -> int:
        return await self._workers.run(direct.finish_multipart, self._bucket, key, parts)

    def multipart_id(self, key: StorageKey) -> str | None:
        return key.ref.removeprefix(DIRECT) or None if key.ref.startswith(DIRECT) else None

    async def finished_size(self, key: StorageKey) -> int | None:
        obj = self.object_key(key)
        return await self._workers.run(self._bucket.finished_size, obj)

    async def sign_get(
        self,
        key: StorageKey,
        expires_in: int,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        obj = self.object_key(key)
        direct.check_expiry(expires_in)
        disposition = None if filename is None else direct.content_disposition(filename)
        return await self._workers.run(
            self.client.presign_get, self.bucket, obj, expires_in, disposition, content_type
        )
