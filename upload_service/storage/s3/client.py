"""The handful of S3 operations ``S3Store`` uses, behind a Protocol of our own (boto3's
implementation is in ``boto``), and the values they return.

Every method is synchronous and blocking: ``S3Store`` calls them in worker threads only (the
``presign_*`` ones do no I/O, but sign with credentials a provider may refresh over the network).
Crash story: none of its own; every call is one S3 request, which S3 applies whole or not at all (a
part of the same number replaces the earlier one, a put replaces an object), and the store's
modules order them so that each prefix of the sequence is a state they recover from. Presigning
sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol

from upload_service.storage.base import PostPolicy


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    size: int
    etag: str
    checksum: str = ""  # the part's CRC32 (base64) when the upload has one


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


class Body(Protocol):
    """An object's bytes as they arrive; ``read`` returns b"" at the end."""

    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


class ObjectClient(Protocol):
    """Blocking S3 operations; each raises ``NotFound``, ``StorageUnavailable`` or
    ``StorageError`` and nothing else."""

    def create_multipart_upload(self, bucket: str, key: str) -> str:
        """Returns the new UploadId."""
        ...

    def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: IO[bytes], length: int
    ) -> Part:
        """Uploads ``length`` bytes of ``body`` (from its start) as part ``number``."""
        ...

    def upload_part_copy(
        self, bucket: str, key: str, upload_id: str, number: int, source: str, start: int, end: int
    ) -> Part:
        """Part ``number`` := bytes ``[start, end)`` of object ``source`` (copied by the
        server)."""
        ...

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        """Every part (all pages), by number."""
        ...

    def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[Part]
    ) -> str:
        """The object's ETag."""
        ...

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None: ...

    def list_multipart_uploads(self, bucket: str, prefix: str) -> list[MultipartUpload]: ...

    def put_object(self, bucket: str, key: str, body: IO[bytes], length: int) -> None: ...

    def get_object(self, bucket: str, key: str, start: int, end: int) -> Body:
        """Bytes ``[start, end)`` (``end > start``) as a stream; fewer if the object is shorter."""
        ...

    def head_object(self, bucket: str, key: str) -> int:
        """The object's size."""
        ...

    def delete_object(self, bucket: str, key: str) -> None:
        """Deleting a missing object is not an error."""
        ...

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectInfo]: ...

    def head_bucket(self, bucket: str) -> None: ...

    # -- direct uploads: the browser sends the bytes, to URLs signed for the public endpoint ------

    def create_direct_upload(self, bucket: str, key: str, content_type: str | None) -> str:
        """A multipart upload without a checksum algorithm (browsers send none) of an object of
        ``content_type`` (when given). Returns the new UploadId."""
        ...

    def complete_direct_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        """Completes with a client's ``(number, ETag)`` list; S3's refusals of the list are
        ``BadRequest``."""
        ...

    def presign_upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, expires_in: int
    ) -> str:
        """A URL to PUT part ``number`` to."""
        ...

    def presign_post(
        self, bucket: str, key: str, max_size: int, content_type: str | None, expires_in: int
    ) -> PostPolicy:
        """A form POST of object ``key`` (exactly), of 0..``max_size`` bytes, of exactly
        ``content_type`` when given."""
        ...

    def presign_get(
        self,
        bucket: str,
        key: str,
        expires_in: int,
        disposition: str | None,
        content_type: str | None,
    ) -> str:
        """A URL to GET the object, answered with these Content-Disposition and Content-Type
        when given."""
        ...
