"""Finishing an S3 upload (``finish``) and building a final upload from finished ones
(``concatenate``): the multipart upload completed from a part list of our own.

Crash story: ``finish`` copies the tail in as the last part (server-side), completes the upload
and checks the object's size; the tails are removed only after that. Killed after
``CompleteMultipartUpload``: ``finish`` runs again, finds the object, checks its size and removes
the tails. ``concatenate`` builds the final upload's equal-size parts server-side (UploadPartCopy)
where a part lies within one source object, and spools the parts that span several; the sources
are only read. Killed before completing, it runs again and uploads the same part numbers anew (S3
replaces them); killed after, the run again finds the object an earlier run made and only checks
its size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from upload_service.errors import StorageError
from upload_service.storage.base import StorageKey
from upload_service.storage.s3.bucket import Bucket
from upload_service.storage.s3.client import Part
from upload_service.storage.s3.layout import MAX_PARTS, Layout, tail_key

Source = tuple[str, int, int]  # an object, and the range [start, end) of it to take


def finish(bucket: Bucket, key: StorageKey, length: int) -> None:
    obj = bucket.object_key(key)
    finished = bucket.finished_size(obj)
    if finished is None:
        _complete(bucket, key, obj, length)
        finished = bucket.finished_size(obj)
    if finished != length:
        raise StorageError(f"the finished object holds {finished} bytes, not {length}")
    bucket.delete_tails(obj)


def _complete(bucket: Bucket, key: StorageKey, obj: str, length: int) -> None:
    layout = bucket.layout(key)
    if length == 0:  # S3 wants at least one part: an empty object instead
        bucket.client.put_object(bucket.name, obj, io.BytesIO(b""), 0)
        bucket.client.abort_multipart_upload(bucket.name, obj, layout.upload_id)
        return
    full, rest = divmod(length, layout.part_size)
    if not layout.has_parts(full) or (rest and layout.tails.get(full + 1, 0) < rest):
        raise StorageError(f"upload data holds {layout.size()} bytes, fewer than {length}")
    parts = [layout.parts[number] for number in range(1, full + 1)]
    if rest:
        tail = tail_key(obj, full + 1)
        parts.append(
            bucket.client.upload_part_copy(
                bucket.name, obj, layout.upload_id, full + 1, tail, 0, rest
            )
        )
    if not bucket.client.complete_multipart_upload(bucket.name, obj, layout.upload_id, parts):
        raise StorageError("object storage did not confirm the finished upload")


def concatenate(bucket: Bucket, key: StorageKey, parts: Sequence[StorageKey]) -> int:
    """Parts of exactly the part size, each copied by the server from one source where it
    lies in one, else spooled from the sources it spans; then completed as in ``finish``."""
    obj = bucket.object_key(key)
    sources: list[Source] = []
    for part in parts:
        size = bucket.size(part)
        source, base = bucket.source(part, 0, size)
        if size:
            sources.append((source, -base, size - base))
    total = sum(end - start for _source, start, end in sources)
    finished = bucket.finished_size(obj)
    if finished is None:
        layout = bucket.layout(key)
        if total == 0:
            _complete(bucket, key, obj, 0)
        else:
            _copy_parts(bucket, obj, layout, sources)
        finished = bucket.finished_size(obj)
    if finished != total:  # an earlier run (killed after completing) made the same object
        raise StorageError(f"the concatenated object holds {finished} bytes, not {total}")
    bucket.delete_tails(obj)
    return total


def _copy_parts(bucket: Bucket, obj: str, layout: Layout, sources: list[Source]) -> None:
    pieces: list[Source] = []
    done: list[Part] = []

    def emit() -> None:
        number = len(done) + 1
        length = sum(end - start for _source, start, end in pieces)
        if len(pieces) == 1:
            source, start, end = pieces[0]
            part = bucket.client.upload_part_copy(
                bucket.name, obj, layout.upload_id, number, source, start, end
            )
        else:
            with bucket.spool() as spool:
                for source, start, end in pieces:
                    bucket.copy_into(spool, source, end - start, start)
                spool.flush()
                spool.seek(0)
                part = bucket.client.upload_part(
                    bucket.name, obj, layout.upload_id, number, spool, length
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
    if not bucket.client.complete_multipart_upload(bucket.name, obj, layout.upload_id, done):
        raise StorageError("object storage did not confirm the concatenated upload")
