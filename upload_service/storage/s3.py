"""Uploads as S3 multipart uploads, in any S3-compatible object store (AWS, MinIO, Cloudflare R2).

An upload is the multipart upload of object ``<prefix><upload_id>``; the key's ``ref`` is
``<part size>:<UploadId>``. The part size is the upload's own, chosen at ``create`` from its
length (the configured size, raised only as far as 10,000 parts need; for a deferred length, the
size that fits the largest allowed upload), so a short video never gets the parts a 5 TiB upload
needs. Bytes become durable in two ways: every full part of exactly that size is an uploaded part
(all parts but the last have one size, as R2 requires), and the rest, shorter than a part, is an
"incomplete part" object ``<object>.part.<n>`` (as tusd keeps one), where slot ``n`` is the
number the part it starts will have. Every ``sync`` leaves the tail of its slot (empty at a part
boundary; ``create`` writes the first), so the durable size is ``(n - 1) * part_size`` plus tail
``n``, for the highest slot ``n`` whose parts ``1..n-1`` exist. ``finish`` copies the tail in
as the last part (server-side), completes the upload and checks the object's size.

Crash story (kill -9, or a lost connection, at every step; the committed offset is the database's,
in slot ``k+1``). A tail is never overwritten by another slot's: an old one is deleted only when an
appender opens at an offset (or ``discard_tail`` cuts to one) that does not need it, or at
``finish``. So the committed slot's tail always survives, and:
- Parts uploaded, the new tail not yet written (the request died, or its checksum failed): the
  highest tail is still slot ``k+1``'s, so ``size`` is the committed offset and the parts past it
  do not count. ``append`` at the offset reads back the committed tail and uploads part ``k+1``
  again when it fills (S3 replaces a part of the same number); later stale parts are overwritten or
  left out of ``CompleteMultipartUpload``, whose part list is ours.
- New tail written, offset not committed: ``size`` is past the offset; reconciliation's
  ``discard_tail`` (or the next ``append``) deletes the later tails and cuts slot ``k+1``'s back to
  the committed prefix, which is read back from it.
- Killed after ``CompleteMultipartUpload``: ``finish`` runs again, finds the object, checks its
  size and removes the tails.
Only when a committed tail itself is lost does ``append``/``discard_tail`` refuse (S3 cannot read
the parts of an unfinished upload back); ``size`` then falls below the offset and reconciliation
lowers it, loudly.

Memory per upload: at most ``BUFFER_SIZE`` (1 MiB) of received bytes; the part being built
(< ``part_size``) and each part being uploaded (at most ``concurrency`` per upload) are spooled to
unlinked temporary files, which parts and tails are uploaded from. Reads and digests stream in
``READ_CHUNK`` pieces. Every S3 call runs in one of the store's worker threads; part uploads in a
pool of their own (see ``storage/s3_appender.py`` for how parts in flight stay crash-safe).

A key without a ref (built from the id alone) names no multipart upload: S3 is never searched for
one (that would cost calls, be ambiguous, and hide a caller that lost the ref). For an unfinished
upload such a key finds no data (``NotFound``); a finished object needs no ref and is found by its
object key; ``delete`` of such a key removes the object and the tails only.

Only a finished upload can be read in full: ``read`` of an unfinished upload serves only its tail.
``concatenate`` builds the final upload's equal-size parts server-side (UploadPartCopy) where a part
lies within one source object, and spools the parts that span several.
"""

from __future__ import annotations

import contextlib
import errno
import io
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.to_thread

from upload_service.errors import NotFound, StorageError, StorageFull
from upload_service.storage.base import Fence, Hasher, StorageKey, check_upload_id
from upload_service.storage.s3_appender import S3Appender
from upload_service.storage.s3_layout import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    KiB,
    Layout,
    MiB,
    choose_part_size,
    parse_ref,
    tail_key,
)
from upload_service.storage.s3client import Body, ObjectClient, Part

READ_CHUNK = 256 * KiB
T = TypeVar("T")
Args = TypeVarTuple("Args")


class S3Store:
    """``Store`` + ``Finisher``, ``TailDiscarder``, ``Digester``, ``OrphanLister`` over an
    ``ObjectClient``."""

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
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size  # the smallest part size; each upload's is ``part_size_for``
        self.max_size = max_size  # the largest upload allowed: sizes parts of deferred lengths
        self._spool_dir = spool_dir
        self._threads = threads
        self._limiter: anyio.CapacityLimiter | None = None
        self.concurrency = concurrency  # parts one appender uploads at the same time
        self._part_threads: ThreadPoolExecutor | None = None

    @property
    def spool_dir(self) -> Path | None:
        return self._spool_dir

    def submit(self, function: Callable[[Unpack[Args]], None], *args: *Args) -> Future[None]:
        """``function`` in one of the store's part-upload threads (a pool apart from ``run``'s,
        so an appender waiting in ``run`` for its parts never holds up their uploads)."""
        if self._part_threads is None:
            self._part_threads = ThreadPoolExecutor(self._threads, "s3-parts")
        return self._part_threads.submit(function, *args)

    async def run(self, function: Callable[[Unpack[Args]], T], *args: *Args) -> T:
        """``function`` in one of the store's worker threads (its own limit, so slow part uploads
        never starve the rest of the service's threads). An ``OSError`` here comes from the local
        spool file, never from S3 (the client translates those)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._threads)
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)  # the spool's disk, not the bucket
            raise (StorageFull if full else StorageError)(
                f"cannot spool upload data: {exc.strerror or exc}"
            ) from exc

    def object_key(self, key: StorageKey | str) -> str:
        return self.prefix + check_upload_id(key if isinstance(key, str) else key.upload_id)

    # -- blocking helpers (worker threads only) ---------------------------------------------------

    def _layout(self, key: StorageKey) -> Layout:
        """The unfinished upload's multipart upload (the key's ref) and tails. ``NotFound`` for a
        key without a ref: it names no multipart upload (S3 is never asked to guess one)."""
        upload_id, part_size = parse_ref(key.ref)
        if not upload_id:
            raise NotFound("upload data is missing")
        obj = self.object_key(key)
        parts = {part.number: part for part in self.client.list_parts(self.bucket, obj, upload_id)}
        if part_size is None:
            part_size = parts[1].size if 1 in parts else self.part_size
        return Layout(upload_id, part_size, parts, self._tails(obj))

    def _tails(self, obj: str) -> dict[int, int]:
        tails: dict[int, int] = {}
        stem = tail_key(obj, 0)[:-1]
        for info in self.client.list_objects(self.bucket, stem):
            number = info.key[len(stem) :]
            if number.isdigit():
                tails[int(number)] = info.size
        return tails

    def _finished_size(self, obj: str) -> int | None:
        try:
            return self.client.head_object(self.bucket, obj)
        except NotFound:
            return None

    def _create(self, upload_id: str) -> str:
        obj = self.object_key(upload_id)
        existing = self.client.list_multipart_uploads(self.bucket, obj)
        if self._finished_size(obj) is not None or any(u.key == obj for u in existing):
            raise StorageError("cannot create upload: it already exists")
        ref = self.client.create_multipart_upload(self.bucket, obj)
        # An empty tail: the upload's bytes (none yet) and when they last changed, readable in
        # listings (some S3 servers report a fixed initiation time).
        self.client.put_object(self.bucket, tail_key(obj, 1), io.BytesIO(b""), 0)
        return ref

    def _open(self, key: StorageKey, offset: int) -> tuple[Layout, IO[bytes], int]:
        obj = self.object_key(key)
        layout = self._layout(key)
        full, rest = divmod(offset, layout.part_size)
        tail = layout.tails.get(full + 1, -1)
        if any(number not in layout.parts for number in range(1, full + 1)) or tail < rest:
            raise StorageError(
                f"upload data holds {layout.size()} bytes, fewer than offset {offset}"
            )
        spool = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 (the appender owns it)
        try:
            if rest:
                self._copy_into(spool, tail_key(obj, full + 1), rest)
            for number in layout.tails:  # tails of other slots than ``offset``'s: not needed
                if number != full + 1:
                    self.client.delete_object(self.bucket, tail_key(obj, number))
        except BaseException:
            spool.close()
            raise
        return layout, spool, tail

    def _copy_into(self, spool: IO[bytes], source: str, length: int, start: int = 0) -> None:
        body = self.client.get_object(self.bucket, source, start, start + length)
        try:
            copied = 0
            while copied < length:
                chunk = body.read(min(MiB, length - copied))
                if not chunk:
                    raise StorageError("an upload's tail object is shorter than it was")
                spool.write(chunk)
                copied += len(chunk)
        finally:
            body.close()

    def _size(self, key: StorageKey) -> int:
        finished = self._finished_size(self.object_key(key))
        return finished if finished is not None else self._layout(key).size()

    def _source(self, key: StorageKey, start: int, end: int) -> tuple[str, int]:
        """The object holding bytes ``[start, end)`` and the offset it starts at."""
        obj = self.object_key(key)
        finished = self._finished_size(obj)
        if finished is not None:
            if end > finished:
                raise StorageError("upload data is shorter than its offset")
            return obj, 0
        layout = self._layout(key)
        if end > layout.size():
            raise StorageError("upload data is shorter than its offset")
        slot_start = layout.slot_start()
        if start < slot_start and start < end:
            raise StorageError("an unfinished upload's uploaded parts cannot be read back")
        return tail_key(obj, layout.slot()), slot_start

    def _open_range(self, key: StorageKey, start: int, end: int) -> Body | None:
        source, base = self._source(key, start, end)
        if start == end:
            return None
        return self.client.get_object(self.bucket, source, start - base, end - base)

    def _digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        size = self._size(key)
        body = self._open_range(key, 0, size)
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

    def _finish(self, key: StorageKey, length: int) -> None:
        obj = self.object_key(key)
        finished = self._finished_size(obj)
        if finished is None:
            self._complete(key, obj, length)
            finished = self._finished_size(obj)
        if finished != length:
            raise StorageError(f"the finished object holds {finished} bytes, not {length}")
        self._delete_tails(obj)

    def _complete(self, key: StorageKey, obj: str, length: int) -> None:
        layout = self._layout(key)
        if length == 0:  # S3 wants at least one part: an empty object instead
            self.client.put_object(self.bucket, obj, io.BytesIO(b""), 0)
            self.client.abort_multipart_upload(self.bucket, obj, layout.upload_id)
            return
        full, rest = divmod(length, layout.part_size)
        if any(number not in layout.parts for number in range(1, full + 1)) or (
            rest and layout.tails.get(full + 1, 0) < rest
        ):
            raise StorageError(f"upload data holds {layout.size()} bytes, fewer than {length}")
        parts = [layout.parts[number] for number in range(1, full + 1)]
        if rest:
            tail = tail_key(obj, full + 1)
            parts.append(
                self.client.upload_part_copy(
                    self.bucket, obj, layout.upload_id, full + 1, tail, 0, rest
                )
            )
        if not self.client.complete_multipart_upload(self.bucket, obj, layout.upload_id, parts):
            raise StorageError("object storage did not confirm the finished upload")

    def _concatenate(self, key: StorageKey, parts: Sequence[StorageKey]) -> int:
        """Parts of exactly the part size, each copied by the server from one source where it
        lies in one, else spooled from the sources it spans; then completed as in ``finish``."""
        obj = self.object_key(key)
        sources: list[tuple[str, int, int]] = []  # object, start, end
        for part in parts:
            size = self._size(part)
            source, base = self._source(part, 0, size)
            if size:
                sources.append((source, -base, size - base))
        total = sum(end - start for _source, start, end in sources)
        finished = self._finished_size(obj)
        if finished is None:
            layout = self._layout(key)
            if total == 0:
                self._complete(key, obj, 0)
            else:
                self._copy_parts(obj, layout, sources)
            finished = self._finished_size(obj)
        if finished != total:  # an earlier run (killed after completing) made the same object
            raise StorageError(f"the concatenated object holds {finished} bytes, not {total}")
        self._delete_tails(obj)
        return total

    def _copy_parts(self, obj: str, layout: Layout, sources: list[tuple[str, int, int]]) -> None:
        pieces: list[tuple[str, int, int]] = []
        done: list[Part] = []

        def emit() -> None:
            number = len(done) + 1
            length = sum(end - start for _source, start, end in pieces)
            if len(pieces) == 1:
                source, start, end = pieces[0]
                part = self.client.upload_part_copy(
                    self.bucket, obj, layout.upload_id, number, source, start, end
                )
            else:
                with tempfile.TemporaryFile(dir=self._spool_dir) as spool:
                    for source, start, end in pieces:
                        self._copy_into(spool, source, end - start, start)
                    spool.flush()
                    spool.seek(0)
                    part = self.client.upload_part(
                        self.bucket, obj, layout.upload_id, number, spool, length
                    )
            done.append(part)
            pieces.clear()

        filled = 0
        for source, start, end in sources:
            while start < end:
                take = min(end - start, layout.part_size - filled)
                pieces.append((source, start, start + take))
                filled += take
                start += take
                if filled == layout.part_size:
                    emit()
                    filled = 0
        if pieces:
            emit()
        if len(done) > MAX_PARTS:
            raise StorageError(f"the concatenation needs more than {MAX_PARTS} parts")
        if not self.client.complete_multipart_upload(self.bucket, obj, layout.upload_id, done):
            raise StorageError("object storage did not confirm the concatenated upload")

    def _discard_tail(self, key: StorageKey, length: int) -> None:
        obj = self.object_key(key)
        layout = self._layout(key)
        if length >= layout.size():
            return  # never extends
        full, rest = divmod(length, layout.part_size)
        tail = layout.tails.get(full + 1, -1)
        if any(number not in layout.parts for number in range(1, full + 1)) or tail < rest:
            # Only possible if the tail of a committed offset was lost: S3 cannot read parts back.
            raise StorageError(f"cannot cut the upload back to {length} bytes: its tail is gone")
        if tail != rest:
            with tempfile.TemporaryFile(dir=self._spool_dir) as spool:
                if rest:
                    self._copy_into(spool, tail_key(obj, full + 1), rest)
                spool.flush()
                spool.seek(0)
                self.client.put_object(self.bucket, tail_key(obj, full + 1), spool, rest)
        for number in layout.tails:  # later slots' tails: parts past them are then ignored
            if number > full + 1:
                self.client.delete_object(self.bucket, tail_key(obj, number))

    def _delete_tails(self, obj: str) -> None:
        for number in self._tails(obj):
            self.client.delete_object(self.bucket, tail_key(obj, number))

    def _delete(self, key: StorageKey) -> None:
        """Abort the key's multipart upload (if it has a ref), delete the object and the tails."""
        obj = self.object_key(key)
        upload_id, _part_size = parse_ref(key.ref)
        if upload_id:
            with contextlib.suppress(NotFound):
                self.client.abort_multipart_upload(self.bucket, obj, upload_id)
        self.client.delete_object(self.bucket, obj)
        self._delete_tails(obj)

    def _stored_before(self, moment: datetime) -> list[StorageKey]:
        """Unfinished uploads initiated before ``moment`` whose tail objects (rewritten at every
        ``sync``) are all older too: one listing per unfinished upload, none per finished one."""
        found: list[StorageKey] = []
        for upload in self.client.list_multipart_uploads(self.bucket, self.prefix):
            upload_id = upload.key[len(self.prefix) :]
            try:
                check_upload_id(upload_id)
            except NotFound:
                continue  # not one of ours
            if upload.initiated >= moment:
                continue
            stem = tail_key(upload.key, 0)[:-1]
            tails = self.client.list_objects(self.bucket, stem)
            if all(info.modified < moment for info in tails):
                found.append(StorageKey(upload_id, upload.upload_id))
        return found

    # -- the Store contract -----------------------------------------------------------------------

    def part_size_for(self, length: int | None) -> int:
        """An upload's part size: the configured one, raised (whole MiB) only as far as its
        length, or for a deferred length the largest allowed upload, needs in 10,000 parts."""
        try:
            return choose_part_size(self.max_size if length is None else length, self.part_size)
        except ValueError as exc:
            raise StorageError(f"cannot create upload: {exc}") from exc

    async def create(self, upload_id: str, length: int | None = None) -> StorageKey:
        check_upload_id(upload_id)
        part_size = self.part_size_for(length)
        multipart_id = await self.run(self._create, upload_id)
        return StorageKey(upload_id, f"{part_size}:{multipart_id}")

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> S3Appender:
        obj = self.object_key(key)
        layout, spool, tail = await self.run(self._open, key, offset)
        return S3Appender(
            self,
            obj,
            layout.upload_id,
            layout.part_size,
            offset,
            spool,
            tail,
            hashers,
            fence,
            self.concurrency,
        )

    async def size(self, key: StorageKey) -> int:
        self.object_key(key)
        return await self.run(self._size, key)

    async def read(self, key: StorageKey, start: int, end: int) -> AsyncIterator[bytes]:
        self.object_key(key)
        body = await self.run(self._open_range, key, start, end)
        if body is None:
            return
        try:
            remaining = end - start
            while remaining > 0:
                chunk = await self.run(body.read, min(READ_CHUNK, remaining))
                if not chunk:
                    raise StorageError("upload data is shorter than its offset")
                remaining -= len(chunk)
                yield chunk
        finally:
            await self.run(body.close)

    async def delete(self, key: StorageKey) -> None:
        self.object_key(key)
        await self.run(self._delete, key)

    async def check(self) -> None:
        await self.run(self.client.head_bucket, self.bucket)

    async def aclose(self) -> None:
        threads, self._part_threads = self._part_threads, None
        if threads is not None:  # appenders were closed first: nothing is in flight
            await anyio.to_thread.run_sync(threads.shutdown)

    # -- capabilities -----------------------------------------------------------------------------

    async def finish(self, key: StorageKey, length: int) -> None:
        self.object_key(key)
        await self.run(self._finish, key, length)

    async def concatenate(self, key: StorageKey, parts: Sequence[StorageKey]) -> int:
        self.object_key(key)
        return await self.run(self._concatenate, key, parts)

    async def discard_tail(self, key: StorageKey, length: int) -> None:
        self.object_key(key)
        await self.run(self._discard_tail, key, length)

    async def digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        self.object_key(key)
        return await self.run(self._digest, key, hasher)

    async def stored_before(self, moment: datetime) -> list[StorageKey]:
        return await self.run(self._stored_before, moment)
