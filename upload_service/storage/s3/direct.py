"""Direct uploads: the browser sends the bytes straight to the bucket, to URLs the service signs,
as the parts of a multipart upload (ref ``direct:<UploadId>``) or one form POST (ref ``post:``).
Blocking; worker threads only. The service never sees the bytes, so nothing here counts or
hashes them: the object S3 completes is the upload.

Crash story. ``begin_multipart`` refuses an existing object or multipart upload, then creates the
multipart upload; the caller inserts the row only after it returned, so a kill -9 between leaves
a multipart upload that no row names: it has no tails, so ``stored_before`` dates it by its
initiation alone and the sweep deletes it once no row names it. ``begin_post`` writes nothing: a
crash after it leaves nothing, but a policy outlives its row (a deleted upload's browser may still
post), so its expiry should be short. The parts are the browser's, each a request S3 applies whole
or not at all. ``finish_multipart`` completes the upload from the browser's list, then reads the
object's size; killed after ``CompleteMultipartUpload``, it runs again, finds the multipart upload
gone and the object there, and returns its size. ``delete`` (in ``store``) aborts the multipart
upload (a no-op once gone) and deletes the object, so it may just run again; a part still in
flight may outlive an abort (S3 says to abort again), which a second ``delete`` does.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from urllib.parse import quote

from upload_service.errors import NotFound, StorageError
from upload_service.storage.base import DirectPart, PostPolicy, StorageKey
from upload_service.storage.s3.bucket import Bucket
from upload_service.storage.s3.layout import DIRECT, MAX_PARTS, MiB, parse_ref

MAX_POST_SIZE = 5 * 1024 * MiB  # S3's largest object in one request
MAX_EXPIRY = 7 * 24 * 3600  # SigV4's longest


def check_expiry(expires_in: int) -> int:
    if not 1 <= expires_in <= MAX_EXPIRY:
        raise ValueError(f"a signature expires in 1 s to 7 days, not {expires_in} s")
    return expires_in


def multipart_id(key: StorageKey) -> str:
    """The UploadId of a direct multipart upload's key; ``StorageError`` for any other key."""
    if not key.ref.startswith(DIRECT):
        raise StorageError("this upload is not a direct multipart upload")
    return parse_ref(key.ref)[0]


def begin_multipart(bucket: Bucket, upload_id: str, content_type: str | None) -> str:
    obj = bucket.object_key(upload_id)
    bucket.refuse_existing(obj)
    return bucket.client.create_direct_upload(bucket.name, obj, content_type)


def begin_post(
    bucket: Bucket, upload_id: str, max_size: int | None, content_type: str | None, expires_in: int
) -> PostPolicy:
    limit = MAX_POST_SIZE if max_size is None else min(max_size, MAX_POST_SIZE)
    if limit < 0:
        raise ValueError(f"a form upload holds 0 to 5 GiB, not {limit} bytes")
    obj = bucket.object_key(upload_id)
    bucket.refuse_existing(obj)
    return bucket.client.presign_post(bucket.name, obj, limit, content_type, expires_in)


def sign_part(bucket: Bucket, key: StorageKey, number: int, expires_in: int) -> str:
    if not 1 <= number <= MAX_PARTS:
        raise ValueError(f"part numbers are 1 to {MAX_PARTS}, not {number}")
    obj = bucket.object_key(key)
    return bucket.client.presign_upload_part(
        bucket.name, obj, multipart_id(key), number, expires_in
    )


def direct_parts(bucket: Bucket, key: StorageKey) -> list[DirectPart]:
    obj = bucket.object_key(key)
    parts = bucket.client.list_parts(bucket.name, obj, multipart_id(key))
    return [DirectPart(part.number, part.size, part.etag.strip('"')) for part in parts]


def finish_multipart(bucket: Bucket, key: StorageKey, parts: Sequence[tuple[int, str]]) -> int:
    obj = bucket.object_key(key)
    # gone: completed before (a crash after completing), or deleted; the object says which
    with contextlib.suppress(NotFound):
        bucket.client.complete_direct_upload(bucket.name, obj, multipart_id(key), parts)
    size = bucket.finished_size(obj)
    if size is None:
        raise NotFound("upload data is missing")
    return size


_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\/%;]')  # outside printable ASCII, or special in the header
_ATTR_CHAR = "!#$&+-.^_`|~"  # RFC 5987's attr-char besides letters and digits


def content_disposition(filename: str) -> str:
    """``attachment`` named ``filename`` (RFC 6266): a plain ASCII fallback and the UTF-8 name."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1] or "download"
    fallback = _UNSAFE.sub("_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe=_ATTR_CHAR)}"
