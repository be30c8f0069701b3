"""What reconciliation and the orphan sweep ask of the S3 store after a crash.

Crash story (the committed offset is the database's, in slot ``k+1``). New tail written, offset
not committed: ``size`` is past the offset; ``discard_tail`` (or the next ``append``) deletes the
later tails and cuts slot ``k+1``'s back to the committed prefix, which is read back from it; parts
past it are then ignored. It never extends, and it rewrites a tail only with a prefix of itself, so
a kill -9 midway leaves either the old tail or the cut one, and the later tails it had not deleted
yet are deleted when it runs again. Only when a committed tail itself is lost does it refuse (S3
cannot read the parts of an unfinished upload back); ``size`` then falls below the offset and
reconciliation lowers it, loudly.

Orphans: a crash between creating an upload's multipart upload and inserting its row leaves one
that no row names. ``stored_before`` lists the unfinished uploads initiated before a moment whose
tail objects (rewritten at every ``sync``) are all older too, and only those named like an upload
id under the store's prefix.
"""

from __future__ import annotations

from datetime import datetime

from upload_service.errors import NotFound, StorageError
from upload_service.storage.base import StorageKey, check_upload_id
from upload_service.storage.s3.bucket import Bucket
from upload_service.storage.s3.layout import tail_key


def discard_tail(bucket: Bucket, key: StorageKey, length: int) -> None:
    obj = bucket.object_key(key)
    layout = bucket.layout(key)
    if length >= layout.size():
        return  # never extends
    full, rest = divmod(length, layout.part_size)
    tail = layout.tails.get(full + 1, -1)
    if not layout.has_parts(full) or tail < rest:
        # Only possible if the tail of a committed offset was lost: S3 cannot read parts back.
        raise StorageError(f"cannot cut the upload back to {length} bytes: its tail is gone")
    if tail != rest:
        with bucket.spool() as spool:
            if rest:
                bucket.copy_into(spool, tail_key(obj, full + 1), rest)
            spool.flush()
            spool.seek(0)
            bucket.client.put_object(bucket.name, tail_key(obj, full + 1), spool, rest)
    for number in layout.tails:  # later slots' tails: parts past them are then ignored
        if number > full + 1:
            bucket.client.delete_object(bucket.name, tail_key(obj, number))


def stored_before(bucket: Bucket, moment: datetime) -> list[StorageKey]:
    """Unfinished uploads initiated before ``moment`` whose tail objects (rewritten at every
    ``sync``) are all older too: one listing per unfinished upload, none per finished one."""
    found: list[StorageKey] = []
    for upload in bucket.client.list_multipart_uploads(bucket.name, bucket.prefix):
        upload_id = upload.key[len(bucket.prefix) :]
        try:
            check_upload_id(upload_id)
        except NotFound:
            continue  # not one of ours
        if upload.initiated >= moment:
            continue
        stem = tail_key(upload.key, 0)[:-1]
        tails = bucket.client.list_objects(bucket.name, stem)
        if all(info.modified < moment for info in tails):
            found.append(StorageKey(upload_id, upload.upload_id))
    return found
