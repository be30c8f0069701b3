"""The S3 store's view of its bucket: object keys, and what an upload has stored, read back
(blocking; worker threads only).

Crash story: this module writes nothing but the deletes of every tail (once the upload is
finished or deleted); it reads back what survives a kill -9. An unfinished upload's size is its
``Layout``'s: the parts and the tails that S3 lists, whatever a crash left of a request. A key
without a ref (built from the id alone) names no multipart upload: S3 is never searched for one
(that would cost calls, be ambiguous, and hide a caller that lost the ref), so for an unfinished
upload such a key finds no data (``NotFound``); a finished object needs no ref and is found by its
object key. Only a finished upload can be read in full: of an unfinished one only the tail of the
latest slot can be read back (S3 cannot read the parts of an unfinished upload). A direct upload
(``layout.is_direct``) has no tails and no ``Layout``: unfinished, its size is the sum of the parts
the browser sent (a POST's is 0), and none of it can be read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO

from upload_service.errors import NotFound, StorageError
from upload_service.storage.base import StorageKey, check_upload_id
from upload_service.storage.s3.client import Body, ObjectClient
from upload_service.storage.s3.layout import Layout, MiB, is_direct, parse_ref, tail_key

DIRECT_REFUSAL = "this upload's bytes go straight to the bucket: it takes no appends"


class Bucket:
    """The bucket, its key prefix, the smallest part size (that of a ref that records none) and
    the spool directory; ``client`` may be replaced (every call reads it)."""

    def __init__(
        self,
        client: ObjectClient,
        name: str,
        prefix: str,
        part_size: int,
        spool_dir: Path | None,
    ) -> None:
        self.client = client
        self.name = name
        self.prefix = prefix
        self.part_size = part_size
        self.spool_dir = spool_dir

    def object_key(self, key: StorageKey | str) -> str:
        return self.prefix + check_upload_id(key if isinstance(key, str) else key.upload_id)

    def spool(self) -> IO[bytes]:
        """A new unlinked temporary file in the spool directory."""
        return tempfile.TemporaryFile(dir=self.spool_dir)

    def layout(self, key: StorageKey) -> Layout:
        """The unfinished upload's multipart upload (the key's ref) and tails. ``NotFound`` for a
        key without a ref: it names no multipart upload (S3 is never asked to guess one)."""
        if is_direct(key.ref):
            raise StorageError(DIRECT_REFUSAL)
        upload_id, part_size = parse_ref(key.ref)
        if not upload_id:
            raise NotFound("upload data is missing")
        obj = self.object_key(key)
        parts = {part.number: part for part in self.client.list_parts(self.name, obj, upload_id)}
        if part_size is None:
            part_size = parts[1].size if 1 in parts else self.part_size
        return Layout(upload_id, part_size, parts, self.tails(obj))

    def tails(self, obj: str) -> dict[int, int]:
        tails: dict[int, int] = {}
        stem = tail_key(obj, 0)[:-1]
        for info in self.client.list_objects(self.name, stem):
            number = info.key[len(stem) :]
            if number.isdigit():
                tails[int(number)] = info.size
        return tails

    def delete_tails(self, obj: str) -> None:
        for number in self.tails(obj):
            self.client.delete_object(self.name, tail_key(obj, number))

    def refuse_existing(self, obj: str) -> None:
        """``StorageError`` when the object or a multipart upload of it exists already."""
        existing = self.client.list_multipart_uploads(self.name, obj)
        if self.finished_size(obj) is not None or any(u.key == obj for u in existing):
            raise StorageError("cannot create upload: it already exists")

    def finished_size(self, obj: str) -> int | None:
        try:
            return self.client.head_object(self.name, obj)
        except NotFound:
            return None

    def size(self, key: StorageKey) -> int:
        obj = self.object_key(key)
        finished = self.finished_size(obj)
        if finished is not None:
            return finished
        if not is_direct(key.ref):
            return self.layout(key).size()
        upload_id, _part_size = parse_ref(key.ref)
        if not upload_id:
            return 0  # a POST's object appears whole, or not at all
        return sum(part.size for part in self.client.list_parts(self.name, obj, upload_id))

    def source(self, key: StorageKey, start: int, end: int) -> tuple[str, int]:
        """The object holding bytes ``[start, end)`` and the offset it starts at."""
        obj = self.object_key(key)
        finished = self.finished_size(obj)
        if finished is not None:
            if end > finished:
                raise StorageError("upload data is shorter than its offset")
            return obj, 0
        if is_direct(key.ref):
            if end > 0:
                raise StorageError("a direct upload cannot be read before it is finished")
            return obj, 0
        layout = self.layout(key)
        if end > layout.size():
            raise StorageError("upload data is shorter than its offset")
        slot_start = layout.slot_start()
        if start < slot_start and start < end:
            raise StorageError("an unfinished upload's uploaded parts cannot be read back")
        return tail_key(obj, layout.slot()), slot_start

    def open_range(self, key: StorageKey, start: int, end: int) -> Body | None:
        source, base = self.source(key, start, end)
        if start == end:
            return None
        return self.client.get_object(self.name, source, start - base, end - base)

    def copy_into(self, spool: IO[bytes], source: str, length: int, start: int = 0) -> None:
        body = self.client.get_object(self.name, source, start, start + length)
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
