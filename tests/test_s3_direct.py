"""Direct uploads (``DirectStore``) against the real moto server: the browser's part PUTs and form
POSTs go to presigned URLs with httpx, as a browser's would, and the store begins, lists, finishes,
reads, signs downloads of and deletes what they made.

moto does not enforce a POST policy's conditions (a wrong Content-Type, a file over the
content-length-range, another key: all stored, 204), so the conditions are checked in the signed
policy document itself, not by posting against them."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import httpx
import pytest

from tests import s3 as moto
from upload_service.app import connect_s3
from upload_service.errors import BadRequest, NotFound, StorageError
from upload_service.settings import load_settings
from upload_service.storage.base import DirectPart, DirectStore, PostPolicy, StorageKey
from upload_service.storage.s3.boto import Boto3ObjectClient
from upload_service.storage.s3.client import ObjectClient
from upload_service.storage.s3.direct import content_disposition
from upload_service.storage.s3.store import S3Store

MiB = 1024 * 1024
PART = 5 * MiB
PREFIX = "uploads/"
UPLOAD_ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "fedcba9876543210fedcba9876543210"
PUBLIC = "https://files.example.test:8443"  # nothing listens there: signing sends nothing


def _data(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def _store(client: ObjectClient, bucket: str) -> S3Store:
    return S3Store(client, bucket, PREFIX, part_size=PART)


@pytest.fixture
async def store(moto_endpoint: str, bucket: str) -> AsyncIterator[S3Store]:
    opened = _store(moto.client(moto_endpoint), bucket)
    try:
        yield opened
    finally:
        await opened.aclose()


async def _put(url: str, data: bytes) -> str:
    """PUT a part as a browser does (no checksum, no signing of its own); its ETag, unquoted."""
    async with httpx.AsyncClient() as http:
        response = await http.put(url, content=data)
    assert response.status_code == 200, response.text
    return response.headers["ETag"].strip('"')


async def _post(policy: PostPolicy, data: bytes, content_type: str) -> httpx.Response:
    """A browser's form POST: the policy's fields, then the file."""
    async with httpx.AsyncClient() as http:
        return await http.post(
            policy.url, data=policy.fields, files={"file": ("clip.bin", data, content_type)}
        )


async def _send_parts(store: S3Store, key: StorageKey, pieces: Sequence[bytes]) -> list[str]:
    return [
        await _put(await store.sign_part(key, number, 60), piece)
        for number, piece in enumerate(pieces, start=1)
    ]


async def _read(store: S3Store, key: StorageKey, length: int) -> bytes:
    return b"".join([piece async for piece in store.read(key, 0, length)])


async def _admin(endpoint: str, method: str, **params: Any) -> Any:
    call = getattr(moto.admin(endpoint), method)
    return await anyio.to_thread.run_sync(lambda: call(**params))


def _policy_document(policy: PostPolicy) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(base64.b64decode(policy.fields["policy"]))
    return document


async def test_the_s3_store_offers_direct_uploads(store: S3Store) -> None:
    assert isinstance(store, DirectStore)


async def test_parts_the_browser_puts_become_the_object(store: S3Store, moto_endpoint: str) -> None:
    first, second = _data(PART + 1234, 1), _data(4321, 2)
    key = await store.begin_multipart(UPLOAD_ID, "video/mp4")
    assert key.upload_id == UPLOAD_ID
    assert key.ref.startswith("direct:")
    obj = store.object_key(key)
    uploads = await _admin(moto_endpoint, "list_multipart_uploads", Bucket=store.bucket)
    [upload] = uploads["Uploads"]
    assert (upload["Key"], "direct:" + upload["UploadId"]) == (obj, key.ref)
    assert "ChecksumAlgorithm" not in upload, "browsers send no checksums"
    assert moto.object_keys(moto_endpoint, store.bucket) == [], "a direct upload has no tails"

    etags = await _send_parts(store, key, [first, second])
    assert await store.direct_parts(key) == [
        DirectPart(1, len(first), etags[0]),
        DirectPart(2, len(second), etags[1]),
    ]
    assert await store.size(key) == len(first) + len(second)  # what the browser sent so far
    assert await store.finished_size(key) is None

    total = await store.finish_multipart(key, [(1, etags[0]), (2, f'"{etags[1]}"')])
    data = first + second
    assert total == len(data)
    assert await store.finished_size(key) == len(data)
    assert await store.size(key) == len(data)
    assert await _read(store, key, len(data)) == data
    assert await store.digest(key, hashlib.sha256()) == hashlib.sha256(data).digest()
    head = await _admin(moto_endpoint, "head_object", Bucket=store.bucket, Key=obj)
    assert head["ContentType"] == "video/mp4"
    assert moto.multipart_uploads(moto_endpoint, store.bucket) == []
    with pytest.raises(NotFound):
        await store.direct_parts(key)

    assert await store.finish_multipart(key, [(1, etags[0]), (2, etags[1])]) == len(data)


class GoneUploads:
    """The real client, but S3 no longer knows the multipart upload when asked to complete it
    (as after a crash that followed the completion)."""

    def __init__(self, real: ObjectClient) -> None:
        self._real = real

    def complete_direct_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        raise NotFound("upload data is missing")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_finishing_again_after_a_crash_returns_the_object_s_size(
    moto_endpoint: str, bucket: str
) -> None:
    store = _store(GoneUploads(moto.client(moto_endpoint)), bucket)
    try:
        key = await store.begin_multipart(UPLOAD_ID, None)
        multipart_id = key.ref.removeprefix("direct:")
        etag = (await _send_parts(store, key, [b"tiny"]))[0]
        with pytest.raises(NotFound):  # neither the upload (as S3 says) nor the object is there
            await store.finish_multipart(key, [(1, etag)])
        await _admin(  # the earlier run completed it, then the service was killed
            moto_endpoint,
            "complete_multipart_upload",
            Bucket=bucket,
            Key=store.object_key(key),
            UploadId=multipart_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
        assert await store.finish_multipart(key, [(1, etag)]) == 4
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong etag", "InvalidPart"),
        ("missing part", "InvalidPart"),
        ("first part too small", "EntityTooSmall"),
        ("no parts", "MalformedXML"),
    ],
)
async def test_a_part_list_s3_refuses_is_a_bad_request(
    store: S3Store, case: str, code: str
) -> None:
    key = await store.begin_multipart(UPLOAD_ID, None)
    small = case == "first part too small"
    etags = await _send_parts(store, key, [b"a" * (10 if small else PART), b"b" * 10])
    parts = {
        "wrong etag": [(1, etags[0]), (2, "0" * 32)],
        "missing part": [(1, etags[0]), (2, etags[1]), (3, etags[1])],
        "first part too small": [(1, etags[0]), (2, etags[1])],
        "no parts": [],
    }[case]
    with pytest.raises(BadRequest) as refused:
        await store.finish_multipart(key, parts)
    assert refused.value.status == 400
    assert code in refused.value.message
    assert "\n" not in refused.value.message
    # the upload is intact: the browser may send the right list
    assert [part.number for part in await store.direct_parts(key)] == [1, 2]


async def test_beginning_refuses_an_upload_that_exists(store: S3Store) -> None:
    await store.begin_multipart(UPLOAD_ID, None)
    with pytest.raises(StorageError, match="already exists"):
        await store.begin_multipart(UPLOAD_ID, None)
    with pytest.raises(StorageError, match="already exists"):
        await store.begin_post(UPLOAD_ID, max_size=None, content_type=None, expires_in=60)
    await store.create(OTHER_ID)  # a tus upload's multipart upload
    with pytest.raises(StorageError, match="already exists"):
        await store.begin_multipart(OTHER_ID, None)


async def test_beginning_refuses_a_finished_object(store: S3Store) -> None:
    _key, policy = await store.begin_post(
        UPLOAD_ID, max_size=None, content_type=None, expires_in=60
    )
    assert (await _post(policy, b"done", "application/octet-stream")).status_code == 204
    with pytest.raises(StorageError, match="already exists"):
        await store.begin_multipart(UPLOAD_ID, None)


@pytest.mark.parametrize("number", [0, -1, 10_001])
async def test_part_numbers_are_1_to_10000(store: S3Store, number: int) -> None:
    key = await store.begin_multipart(UPLOAD_ID, None)
    with pytest.raises(ValueError, match="part numbers"):
        await store.sign_part(key, number, 60)
    assert await store.sign_part(key, 10_000, 60)


@pytest.mark.parametrize("expires_in", [0, 7 * 24 * 3600 + 1])
async def test_signatures_expire_within_seven_days(store: S3Store, expires_in: int) -> None:
    key = await store.begin_multipart(UPLOAD_ID, None)
    with pytest.raises(ValueError, match="expires"):
        await store.sign_part(key, 1, expires_in)
    with pytest.raises(ValueError, match="expires"):
        await store.sign_get(key, expires_in)
    with pytest.raises(ValueError, match="expires"):
        await store.begin_post(OTHER_ID, max_size=1, content_type=None, expires_in=expires_in)


async def test_only_a_direct_multipart_upload_has_parts_to_sign(store: S3Store) -> None:
    post, _policy = await store.begin_post(
        UPLOAD_ID, max_size=None, content_type=None, expires_in=60
    )
    tus = await store.create(OTHER_ID)
    for key in (post, tus):
        with pytest.raises(StorageError, match="not a direct multipart upload"):
            await store.sign_part(key, 1, 60)
        with pytest.raises(StorageError, match="not a direct multipart upload"):
            await store.finish_multipart(key, [])


async def test_a_form_post_under_the_policy_becomes_the_object(
    store: S3Store, moto_endpoint: str
) -> None:
    data = _data(3000)
    key, policy = await store.begin_post(
        UPLOAD_ID, max_size=10_000, content_type="image/png", expires_in=60
    )
    obj = store.object_key(key)
    assert key == StorageKey(UPLOAD_ID, "post:")
    assert policy.url == f"{moto_endpoint}/{store.bucket}/"  # Uppy: location = url + key
    assert policy.fields["key"] == obj
    assert policy.fields["Content-Type"] == "image/png"
    conditions = _policy_document(policy)["conditions"]
    assert ["content-length-range", 0, 10_000] in conditions
    assert {"Content-Type": "image/png"} in conditions
    assert {"key": obj} in conditions
    assert {"bucket": store.bucket} in conditions
    assert await store.size(key) == 0
    assert await store.finished_size(key) is None
    assert moto.object_keys(moto_endpoint, store.bucket) == [], "a policy stores nothing"

    response = await _post(policy, data, "image/png")
    assert response.status_code == 204, response.text
    assert await store.finished_size(key) == len(data)
    assert await store.size(key) == len(data)
    assert await _read(store, key, len(data)) == data
    head = await _admin(moto_endpoint, "head_object", Bucket=store.bucket, Key=obj)
    assert head["ContentType"] == "image/png"
    # what Uppy reports as the file's location: the object's path-style URL
    assert policy.url + policy.fields["key"] == f"{moto_endpoint}/{store.bucket}/{obj}"


async def test_a_policy_without_limits_allows_s3_s_largest_post(store: S3Store) -> None:
    _key, policy = await store.begin_post(
        UPLOAD_ID, max_size=None, content_type=None, expires_in=60
    )
    conditions = _policy_document(policy)["conditions"]
    assert ["content-length-range", 0, 5 * 1024 * MiB] in conditions
    assert "Content-Type" not in policy.fields
    assert not any(isinstance(c, dict) and "Content-Type" in c for c in conditions)
    # a cap above what one request can hold is that most (the service's cap may be 5 TiB)
    _key, larger = await store.begin_post(
        OTHER_ID, max_size=5 * 1024 * MiB + 1, content_type=None, expires_in=1
    )
    assert ["content-length-range", 0, 5 * 1024 * MiB] in _policy_document(larger)["conditions"]
    with pytest.raises(ValueError, match="5 GiB"):
        await store.begin_post("9" * 32, max_size=-1, content_type=None, expires_in=1)


async def test_deleting_a_direct_upload_aborts_it_and_removes_the_object(
    store: S3Store, moto_endpoint: str
) -> None:
    unfinished = await store.begin_multipart(UPLOAD_ID, None)
    await _send_parts(store, unfinished, [b"part one"])
    finished = await store.begin_multipart(OTHER_ID, None)
    etags = await _send_parts(store, finished, [b"whole"])
    await store.finish_multipart(finished, [(1, etags[0])])
    assert len(moto.multipart_uploads(moto_endpoint, store.bucket)) == 1

    await store.delete(unfinished)
    await store.delete(finished)
    assert moto.multipart_uploads(moto_endpoint, store.bucket) == []
    assert moto.object_keys(moto_endpoint, store.bucket) == []
    with pytest.raises(NotFound):
        await store.size(unfinished)
    await store.delete(unfinished)  # gone already: a no-op
    await store.delete(finished)


async def test_deleting_a_posted_upload_removes_the_object(
    store: S3Store, moto_endpoint: str
) -> None:
    key, policy = await store.begin_post(UPLOAD_ID, max_size=None, content_type=None, expires_in=60)
    await store.delete(key)  # nothing posted yet: a no-op
    assert (await _post(policy, b"posted", "text/plain")).status_code == 204
    assert moto.object_keys(moto_endpoint, store.bucket) == [store.object_key(key)]
    await store.delete(key)
    assert moto.object_keys(moto_endpoint, store.bucket) == []
    assert await store.finished_size(key) is None


async def test_a_direct_upload_takes_no_appends(store: S3Store) -> None:
    multipart = await store.begin_multipart(UPLOAD_ID, None)
    post, _policy = await store.begin_post(
        OTHER_ID, max_size=None, content_type=None, expires_in=60
    )
    for key in (multipart, post):
        with pytest.raises(StorageError, match="straight to the bucket"):
            await store.append(key, 0)
        with pytest.raises(StorageError, match="straight to the bucket"):
            await store.discard_tail(key, 0)


async def test_an_unfinished_direct_upload_cannot_be_read(store: S3Store) -> None:
    key = await store.begin_multipart(UPLOAD_ID, None)
    await _send_parts(store, key, [b"unfinished"])
    assert await store.size(key) == 10
    with pytest.raises(StorageError, match="before it is finished"):
        await _read(store, key, 10)
    assert await _read(store, key, 0) == b""


async def test_a_signed_download_names_the_file(store: S3Store) -> None:
    data = _data(2048)
    key, policy = await store.begin_post(UPLOAD_ID, max_size=None, content_type=None, expires_in=60)
    assert (await _post(policy, data, "application/octet-stream")).status_code == 204
    name = 'Résumé "final".pdf'
    url = await store.sign_get(key, 60, filename=name, content_type="application/pdf")
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
        plain = await http.get(await store.sign_get(key, 60))
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="R_sum_ _final_.pdf"; '
        "filename*=UTF-8''R%C3%A9sum%C3%A9%20%22final%22.pdf"
    )
    assert plain.content == data
    assert "Content-Disposition" not in plain.headers


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"),
        (
            "../../etc/passwd",
            "attachment; filename=\"passwd\"; filename*=UTF-8''passwd",
        ),
        (
            "a\\b;c\r\n.txt",
            "attachment; filename=\"b_c__.txt\"; filename*=UTF-8''b%3Bc%0D%0A.txt",
        ),
        ("日本.txt", "attachment; filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"),
        ("", "attachment; filename=\"download\"; filename*=UTF-8''download"),
    ],
)
def test_the_content_disposition_is_safe(filename: str, expected: str) -> None:
    assert content_disposition(filename) == expected


def _public_store(endpoint: str, bucket: str, public: str | None) -> S3Store:
    client = Boto3ObjectClient.connect(
        endpoint_url=endpoint,
        public_endpoint_url=public,
        region=moto.REGION,
        access_key_id="test",
        secret_access_key="test",
    )
    return _store(client, bucket)


@pytest.mark.parametrize("public", [None, PUBLIC])
async def test_presigned_urls_name_the_public_endpoint(
    moto_endpoint: str, bucket: str, public: str | None
) -> None:
    store = await anyio.to_thread.run_sync(_public_store, moto_endpoint, bucket, public)
    try:
        key = await store.begin_multipart(UPLOAD_ID, None)  # requests go to the endpoint
        expected = public or moto_endpoint
        part = await store.sign_part(key, 3, 60)
        download = await store.sign_get(key, 60, filename="a.bin")
        _post_key, policy = await store.begin_post(
            OTHER_ID, max_size=None, content_type=None, expires_in=60
        )
    finally:
        await store.aclose()
    prefix = f"{expected}/{bucket}/{PREFIX}"
    assert part.startswith(prefix + UPLOAD_ID + "?")
    assert download.startswith(prefix + UPLOAD_ID + "?")
    assert policy.url == f"{expected}/{bucket}/"
    query = parse_qs(urlsplit(part).query)
    assert query["partNumber"] == ["3"]
    assert query["uploadId"] == [key.ref.removeprefix("direct:")]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # SigV4, which every region takes
    assert policy.fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"


@pytest.mark.usefixtures("aws_credentials")
@pytest.mark.parametrize("public", [None, PUBLIC])
async def test_the_public_endpoint_setting_reaches_the_signer(
    moto_endpoint: str,
    bucket: str,
    public: str | None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("UPLOAD_S3_PUBLIC_ENDPOINT_URL", public or "")  # empty: unset
    settings = load_settings(
        storage="s3", s3_bucket=bucket, s3_endpoint_url=moto_endpoint, data_dir=tmp_path
    )
    assert settings.s3.public_endpoint_url == public
    client = await anyio.to_thread.run_sync(connect_s3, settings)
    store = S3Store(client, bucket)
    try:
        key = await store.begin_multipart(UPLOAD_ID, None)
        url = await store.sign_part(key, 1, 60)
    finally:
        await store.aclose()
    assert url.startswith(f"{public or moto_endpoint}/{bucket}/{UPLOAD_ID}?")


async def test_the_orphan_sweep_lists_a_direct_upload_no_row_names(
    store: S3Store, moto_endpoint: str
) -> None:
    orphan = await store.begin_multipart(UPLOAD_ID, None)
    await _send_parts(store, orphan, [b"orphaned"])
    posted, policy = await store.begin_post(
        OTHER_ID, max_size=None, content_type=None, expires_in=60
    )
    assert (await _post(policy, b"finished", "text/plain")).status_code == 204
    listed = await store.stored_before(datetime.now(UTC))
    # moto reports a fixed initiation time (2010): the direct upload, without tails, is old
    assert [key.upload_id for key in listed] == [UPLOAD_ID]
    [found] = listed
    assert found.ref.removeprefix("direct:") == orphan.ref.removeprefix("direct:")
    assert await store.stored_before(datetime(2000, 1, 1, tzinfo=UTC)) == []
    await store.delete(found)  # the sweep's delete, by the key it listed
    assert moto.multipart_uploads(moto_endpoint, store.bucket) == []
    assert moto.object_keys(moto_endpoint, store.bucket) == [store.object_key(posted)]
