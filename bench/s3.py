"""S3 for the ``ours-s3`` server and the ``s3`` scenario: moto's standalone server (``moto_server``)
as the object store, one process per measurement on a free 127.0.0.1 port, with a fresh bucket;
and boto3's own ``upload_file`` as the reference client.

moto keeps its objects in memory, and everything above 5 MiB in temporary files: its process gets
a data directory of its own as ``TMPDIR`` (deleted after, like a server's), its buckets are
emptied and deleted after each use, and the process is stopped by its PID at the end of the
measurement. boto3 is imported only where it is used (starting the bench does not pay for it);
every client gets made-up credentials and no AWS configuration file, so nothing of a real AWS
account is read or sent.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.servers import Role, RunningServer, ServerError, ServerSpec, StartError, start

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

REGION = "us-east-1"
BUCKET_PREFIX = "bench-"  # every bucket this suite creates starts with it
# Made-up credentials (moto takes any) and no AWS configuration: the clients read nothing of a
# real account. The servers' environment loses every other AWS_ variable (env_drop_prefix).
CLIENT_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
UPLOADER = Path(__file__).with_name("apps") / "boto3_upload.py"


class S3Error(Exception):
    """moto could not be started, or refused to create, list or delete a bucket or an object."""


@dataclass(frozen=True, slots=True)
class S3Target:
    """The measurement's object store: moto's endpoint, its PID, and the server's bucket."""

    endpoint: str
    pid: int
    bucket: str

    def server_env(self) -> dict[str, str]:
        """The settings that point our server at this bucket."""
        return {
            "UPLOAD_STORAGE": "s3",
            "UPLOAD_S3_ENDPOINT_URL": self.endpoint,
            "UPLOAD_S3_BUCKET": self.bucket,
            "UPLOAD_S3_REGION": REGION,
        }


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str  # without quotes


@dataclass(frozen=True, slots=True)
class UploadResult:
    seconds: float  # upload_file's wall time, in the uploading process
    cpu_seconds: float  # that process's user + system time meanwhile (all its threads)
    threads: int  # TransferConfig's max_concurrency
    part_size: int  # ... and multipart_chunksize
    threshold: int  # ... and multipart_threshold


def moto_executable() -> str | None:
    """``moto_server`` beside this Python (the repository's .venv), else on ``PATH``."""
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


def versions() -> str:
    """``moto 5.x, boto3 1.x``, for the line-up."""
    from importlib import metadata

    found = []
    for name in ("moto", "boto3"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def moto_spec(executable: str) -> ServerSpec:
    return ServerSpec(
        key="moto",
        label="moto_server",
        role=Role.HELPER,
        argv=(executable, "-H", "127.0.0.1", "-p", "{port}"),
        version=versions(),
        ready_path="/",  # ListBuckets: 200 once it serves
        env={"TMPDIR": "{data}"},  # the objects it spools, deleted with its data directory
        env_drop_prefix="AWS_",
    )


def client(endpoint: str) -> S3Client:
    import boto3
    import botocore.config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CLIENT_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CLIENT_ENV["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}
        ),
    )


@contextmanager
def _s3_errors(action: str) -> Iterator[None]:
    import botocore.exceptions

    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise S3Error(f"{action}: {exc}") from exc


def _empty(s3: S3Client, bucket: str) -> None:
    """Abort the bucket's multipart uploads and delete its objects (every page)."""
    for uploads in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in uploads.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for listing in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys: list[ObjectIdentifierTypeDef] = [
            {"Key": item["Key"]} for item in listing.get("Contents", [])
        ]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def empty_bucket(endpoint: str, bucket: str) -> None:
    with _s3_errors(f"emptying bucket {bucket}"):
        _empty(client(endpoint), bucket)


@contextmanager
def fresh_bucket(endpoint: str) -> Iterator[str]:
    """A new, empty bucket ``bench-<hex>`` for the body of the ``with``; emptied and deleted
    after, whatever happened."""
    s3 = client(endpoint)
    name = f"{BUCKET_PREFIX}{secrets.token_hex(6)}"
    with _s3_errors(f"creating bucket {name}"):
        s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        with _s3_errors(f"deleting bucket {name}"):
            _empty(s3, name)
            s3.delete_bucket(Bucket=name)


def object_info(endpoint: str, bucket: str, key: str) -> ObjectInfo:
    with _s3_errors(f"HEAD {bucket}/{key}"):
        head = client(endpoint).head_object(Bucket=bucket, Key=key)
    return ObjectInfo(size=head["ContentLength"], etag=head["ETag"].strip('"'))


@contextmanager
def moto_server(workdir: Path, log_path: Path) -> Iterator[RunningServer]:
    """A ready moto server (its output appended to ``log_path``), stopped by its PID and its
    temporary files deleted after."""
    executable = moto_executable()
    if executable is None:
        raise S3Error("moto_server is not installed (pip install 'moto[server]')")
    try:
        moto = start(moto_spec(executable), workdir, log_path)
    except StartError as exc:
        raise S3Error(str(exc)) from exc
    try:
        yield moto
    finally:
        moto.stop(grace=10)
        moto.remove_data()


@contextmanager
def fresh_target(workdir: Path, log_path: Path) -> Iterator[S3Target]:
    """A moto server of its own and a fresh bucket on it, for one measurement."""
    with moto_server(workdir, log_path) as moto, fresh_bucket(moto.base_url) as bucket:
        yield S3Target(endpoint=moto.base_url, pid=moto.pid, bucket=bucket)
        moto.check_alive()


def _client_environment() -> Mapping[str, str]:
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return {**inherited, **CLIENT_ENV}


def boto3_upload(
    endpoint: str, bucket: str, key: str, source: Path, timeout: float
) -> UploadResult:
    """boto3's ``upload_file`` of ``source`` with its default ``TransferConfig``, in a process of
    its own (``bench/apps/boto3_upload.py``: its imports and client are not timed)."""
    argv = [sys.executable, str(UPLOADER), endpoint, REGION, bucket, key, str(source)]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(_client_environment()),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed it by its PID already
        raise ServerError(f"boto3 upload_file took over {timeout:g} s") from exc
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise S3Error(f"boto3 upload_file exited {done.returncode}: {tail[0]}")
    result = json.loads(done.stdout)
    return UploadResult(
        seconds=float(result["seconds"]),
        cpu_seconds=float(result["cpu_seconds"]),
        threads=int(result["max_concurrency"]),
        part_size=int(result["multipart_chunksize"]),
        threshold=int(result["multipart_threshold"]),
    )
