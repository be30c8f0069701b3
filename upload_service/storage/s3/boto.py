"""boto3's ``ObjectClient``: the error boundary for botocore.

A missing upload or object is ``NotFound``; an endpoint that cannot be reached, a timeout, a 5xx
or throttling is ``StorageUnavailable`` (503 with ``Retry-After``); no space or quota left is
``StorageFull`` (507); S3's refusal of a part list a browser sent is ``BadRequest``; anything else
S3 answers is ``StorageError``. No botocore exception leaves it. URLs and form POSTs for browsers
are signed (SigV4) by a second boto3 client that sends no request, built for the public endpoint
(the one browsers reach, which may differ from the service's: the host is part of a signature).
Crash story: none of its own (one method, one S3 request; see ``client``); a request cut off
by a kill -9 is one S3 never applied, or applied whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions
from urllib3.exceptions import HTTPError as Urllib3Error

from upload_service.errors import (
    BadRequest,
    NotFound,
    ServiceError,
    StorageError,
    StorageFull,
    StorageUnavailable,
)
from upload_service.storage.base import PostPolicy
from upload_service.storage.s3.client import Body, MultipartUpload, ObjectInfo, Part

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef


_MISSING = {"NoSuchUpload", "NoSuchKey", "NotFound", "404"}
# No space or quota left: a 507 (retrying does not help until space is freed). EntityTooLarge is
# one too: the service never sends a part or object over S3's own limits, so a server that says
# so is enforcing a quota (MinIO and Ceph RGW say it of a bucket over its quota).
_FULL = {
    "XMinioStorageFull",
    "XMinioAdminBucketQuotaExceeded",
    "QuotaExceeded",
    "StorageFull",
    "InsufficientStorage",
    "EntityTooLarge",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
    "TooManyRequests",
}
# S3's refusals of a part list a client sent (a part missing or of another ETag, out of order, all
# but the last under 5 MiB, an empty or malformed list): the client's to fix
_BAD_PARTS = {
    "InvalidPart",
    "InvalidPartOrder",
    "EntityTooSmall",
    "MalformedXML",
    "InvalidArgument",
}


def translate(
    exc: Exception, action: str, *, missing_is_not_found: bool = True, client_parts: bool = False
) -> ServiceError:
    """A botocore (or urllib3) failure as a member of the service's error family;
    ``client_parts``: the request carried a client's part list, whose refusal is ``BadRequest``."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = " ".join(str(error.get("Message", "") or code or status).split())  # one line
        if missing_is_not_found and (code in _MISSING or (status == 404 and not code)):
            return NotFound("upload data is missing")
        if client_parts and code in _BAD_PARTS:
            return BadRequest(f"the parts do not make the upload ({code}): {message}")
        if code in _FULL or status == 507:
            return StorageFull(f"cannot {action}: object storage is full ({code or status})")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailable(f"cannot {action}: object storage is unavailable ({code})")
        return StorageError(f"cannot {action}: {message}")
    if isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | Urllib3Error
        | OSError,
    ):
        return StorageUnavailable(f"cannot {action}: object storage is unreachable ({exc})")
    return StorageError(f"cannot {action}: {exc}")


@contextlib.contextmanager
def _translated(
    action: str, *, missing_is_not_found: bool = True, client_parts: bool = False
) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate(
            exc, action, missing_is_not_found=missing_is_not_found, client_parts=client_parts
        ) from exc
    except (Urllib3Error, OSError) as exc:
        raise translate(exc, action) from exc


class _TranslatedBody:
    def __init__(self, body: Body) -> None:
        self._body = body

    def read(self, size: int) -> bytes:
        with _translated("read upload data"):
            return self._body.read(size)

    def close(self) -> None:
        # a failed close of a read stream loses nothing
        with contextlib.suppress(botocore.exceptions.BotoCoreError, Urllib3Error, OSError):
            self._body.close()


class Boto3ObjectClient:
    """``ObjectClient`` over one boto3 client (boto3 clients are thread-safe), and a second one
    that only signs (``signer``; by default the first)."""

    def __init__(
        self, client: S3Client, *, checksums: bool = True, signer: S3Client | None = None
    ) -> None:
        self._client = client
        self._checksums = checksums
        self._signer = signer or client

    @classmethod
    def connect(
        cls,
        *,
        endpoint_url: str | None,
        region: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        path_style: bool = True,
        checksums: bool = True,
        public_endpoint_url: str | None = None,
    ) -> Boto3ObjectClient:
        """``public_endpoint_url``: the endpoint browsers reach, that presigned URLs name (None:
        ``endpoint_url``)."""
        config = botocore.config.Config(
            region_name=region,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path" if path_style else "auto"},
        )
        session = boto3.session.Session()  # sessions are not thread-safe: one of our own
        client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        # boto3 would presign some URLs with SigV2, which most regions and R2 refuse
        signer = session.client(
            "s3",
            endpoint_url=public_endpoint_url or endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config.merge(botocore.config.Config(signature_version="s3v4")),
        )
        return cls(client, checksums=checksums, signer=signer)

    def create_multipart_upload(self, bucket: str, key: str) -> str:
        with _translated("create upload"):
            if self._checksums:
                response = self._client.create_multipart_upload(
                    Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32"
                )
            else:
                response = self._client.create_multipart_upload(Bucket=bucket, Key=key)
            return response["UploadId"]

    def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: IO[bytes], length: int
    ) -> Part:
        with _translated("write upload data"):
            if self._checksums:  # the server checks every part's CRC32 as it arrives
                response = self._client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=length,
                    ChecksumAlgorithm="CRC32",
                )
            else:
                response = self._client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=length,
                )
        return Part(number, length, response["ETag"], response.get("ChecksumCRC32", ""))

    def upload_part_copy(
        self, bucket: str, key: str, upload_id: str, number: int, source: str, start: int, end: int
    ) -> Part:
        with _translated("copy upload data"):
            response = self._client.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": source},
                CopySourceRange=f"bytes={start}-{end - 1}",
            )
        result = response["CopyPartResult"]
        return Part(number, end - start, result["ETag"], result.get("ChecksumCRC32", ""))

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        parts: list[Part] = []
        with _translated("inspect upload"):
            pages = self._client.get_paginator("list_parts").paginate(
                Bucket=bucket, Key=key, UploadId=upload_id
            )
            for page in pages:
                parts.extend(
                    Part(
                        part["PartNumber"],
                        part["Size"],
                        part["ETag"],
                        part.get("ChecksumCRC32", ""),
                    )
                    for part in page.get("Parts", [])
                )
        return sorted(parts, key=lambda part: part.number)

    def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[Part]
    ) -> str:
        completed: list[CompletedPartTypeDef] = [
            {"PartNumber": part.number, "ETag": part.etag, "ChecksumCRC32": part.checksum}
            if part.checksum
            else {"PartNumber": part.number, "ETag": part.etag}
            for part in parts
        ]
        with _translated("finish upload"):
            response = self._client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": completed},
            )
        return response.get("ETag", "")

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        with _translated("delete upload"):
            self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    def list_multipart_uploads(self, bucket: str, prefix: str) -> list[MultipartUpload]:
        found: list[MultipartUpload] = []
        with _translated("list uploads", missing_is_not_found=False):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for page in pages:
                found.extend(
                    MultipartUpload(upload["Key"], upload["UploadId"], upload["Initiated"])
                    for upload in page.get("Uploads", [])
                )
        return found

    def put_object(self, bucket: str, key: str, body: IO[bytes], length: int) -> None:
        with _translated("write upload data"):
            self._client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=length)

    def get_object(self, bucket: str, key: str, start: int, end: int) -> Body:
        with _translated("read upload data"):
            response = self._client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
        return _TranslatedBody(response["Body"])

    def head_object(self, bucket: str, key: str) -> int:
        with _translated("inspect upload"):
            return self._client.head_object(Bucket=bucket, Key=key)["ContentLength"]

    def delete_object(self, bucket: str, key: str) -> None:
        with _translated("delete upload", missing_is_not_found=False):
            self._client.delete_object(Bucket=bucket, Key=key)

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        with _translated("list upload data", missing_is_not_found=False):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for page in pages:
                found.extend(
                    ObjectInfo(item["Key"], item["Size"], item["LastModified"])
                    for item in page.get("Contents", [])
                )
        return found

    def head_bucket(self, bucket: str) -> None:
        with _translated("reach the bucket", missing_is_not_found=False):
            self._client.head_bucket(Bucket=bucket)

    # -- direct uploads ---------------------------------------------------------------------------

    def create_direct_upload(self, bucket: str, key: str, content_type: str | None) -> str:
        with _translated("create upload"):
            if content_type:
                response = self._client.create_multipart_upload(
                    Bucket=bucket, Key=key, ContentType=content_type
                )
            else:
                response = self._client.create_multipart_upload(Bucket=bucket, Key=key)
            return response["UploadId"]

    def complete_direct_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        completed: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": f'"{etag.strip(chr(34))}"'} for number, etag in parts
        ]
        with _translated("finish upload", client_parts=True):
            self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": completed}
            )

    def presign_upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, expires_in: int
    ) -> str:
        with _translated("sign a part's URL"):
            return self._signer.generate_presigned_url(
                "upload_part",
                Params={"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
                ExpiresIn=expires_in,
                HttpMethod="PUT",
            )

    def presign_post(
        self, bucket: str, key: str, max_size: int, content_type: str | None, expires_in: int
    ) -> PostPolicy:
        fields: dict[str, str] = {}
        conditions: list[Any] = [["content-length-range", 0, max_size]]
        if content_type:
            fields["Content-Type"] = content_type
            conditions.append({"Content-Type": content_type})
        with _translated("sign a form upload"):
            signed = self._signer.generate_presigned_post(
                bucket, key, Fields=fields, Conditions=conditions, ExpiresIn=expires_in
            )
        url = signed["url"]
        return PostPolicy(
            url if url.endswith("/") else url + "/",  # path style has none; location = url + key
            {name: str(value) for name, value in signed["fields"].items()},
        )

    def presign_get(
        self,
        bucket: str,
        key: str,
        expires_in: int,
        disposition: str | None,
        content_type: str | None,
    ) -> str:
        params = {"Bucket": bucket, "Key": key}
        if disposition:
            params["ResponseContentDisposition"] = disposition
        if content_type:
            params["ResponseContentType"] = content_type
        with _translated("sign a download URL"):
            return self._signer.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in, HttpMethod="GET"
            )
