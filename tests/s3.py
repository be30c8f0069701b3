"""The S3-compatible server the tests run against: moto's, started as a separate process on a free
loopback port for the session and stopped by its PID at the end. Each test makes its own bucket.

Without ``moto_server`` (or if it does not start) the S3 tests skip with the reason, except under
``CI=true``, where a missing component fails the run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from upload_service.storage.s3.boto import Boto3ObjectClient

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def _executable() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """A running moto server's endpoint URL (its output goes to ``log``); skips (fails under
    CI) when it cannot start."""
    executable = _executable()
    if executable is None:
        _unavailable("moto_server is not installed (pip install 'moto[server]')")
        raise AssertionError  # unreachable: skip/fail raise
    port = _free_port()
    output = log.open("wb")
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                error = log.read_text(errors="replace")
                _unavailable(f"moto_server exited at start: {error[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    _unavailable("moto_server did not start listening within 20 s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


@functools.cache  # building a boto3 client takes a while; one client serves every thread
def client(
    endpoint: str, *, max_attempts: int = 3, connect_timeout: float = 5.0
) -> Boto3ObjectClient:
    return Boto3ObjectClient.connect(
        endpoint_url=endpoint,
        region=REGION,
        access_key_id="test",
        secret_access_key="test",
        max_attempts=max_attempts,
        connect_timeout=connect_timeout,
    )


@functools.cache
def admin(endpoint: str) -> S3Client:
    """A plain boto3 client (not the service's), to set up buckets and to read back what the
    service stored."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server (blocking: call it in a thread from async code)."""
    name = f"test-{secrets.token_hex(6)}"
    admin(endpoint).create_bucket(Bucket=name)
    return name


def object_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key in ``bucket`` starting with ``prefix`` (all pages)."""
    pages = admin(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def multipart_uploads(endpoint: str, bucket: str, prefix: str = "") -> list[tuple[str, str]]:
    """(key, UploadId) of every multipart upload in ``bucket`` not yet completed or aborted whose
    key starts with ``prefix`` (all pages)."""
    paginator = admin(endpoint).get_paginator("list_multipart_uploads")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
    return [(item["Key"], item["UploadId"]) for page in pages for item in page.get("Uploads", [])]


def part_sizes(endpoint: str, bucket: str, key: str, upload_id: str) -> dict[int, int]:
    """Part number -> size of the parts uploaded so far to a multipart upload (all pages)."""
    paginator = admin(endpoint).get_paginator("list_parts")
    pages = paginator.paginate(Bucket=bucket, Key=key, UploadId=upload_id)
    return {part["PartNumber"]: part["Size"] for page in pages for part in page.get("Parts", [])}


def object_sha256(endpoint: str, bucket: str, key: str) -> tuple[str, int, str]:
    """(sha256, bytes read, ETag) of object ``key``, streamed from the server."""
    response = admin(endpoint).get_object(Bucket=bucket, Key=key)
    digest = hashlib.sha256()
    total = 0
    body = response["Body"]
    try:
        for piece in body.iter_chunks(1024 * 1024):
            digest.update(piece)
            total += len(piece)
    finally:
        body.close()
    assert total == response["ContentLength"], f"{key}: read {total} of {response['ContentLength']}"
    return digest.hexdigest(), total, response["ETag"].strip('"')


def empty_bucket(endpoint: str, bucket: str) -> None:
    """Abort every multipart upload and delete every object (frees the server's memory)."""
    s3 = admin(endpoint)
    for key, upload_id in multipart_uploads(endpoint, bucket):
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    for key in object_keys(endpoint, bucket):
        s3.delete_object(Bucket=bucket, Key=key)


def allow_browser_uploads(
    client: S3Client, bucket: str, origin: str, *, max_age: int = 600
) -> None:
    """Put the bucket CORS rule that lets a page on ``origin`` upload straight to ``bucket``:
    presigned part ``PUT``s (whose ``ETag`` the page must read, hence ``ExposeHeaders``), form
    ``POST``s under a POST policy, and ``GET``s.

    moto's server honours it: its ``OPTIONS`` answer and its object answers (UploadPart,
    PutObject, GetObject...) carry the rule's headers for a matching ``Origin``. Without a rule,
    moto's global flask-cors answers the preflight for any origin but exposes no header, so the
    ``ETag`` of a part stays unreadable from the page."""
    client.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": [origin],
                    "AllowedMethods": ["PUT", "POST", "GET"],
                    "AllowedHeaders": ["*"],
                    "ExposeHeaders": ["ETag"],
                    "MaxAgeSeconds": max_age,
                }
            ]
        },
    )
