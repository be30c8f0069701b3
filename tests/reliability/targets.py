"""The configurations a kill storm runs on: SQLite and local disk; PostgreSQL (with its locker)
and local disk; PostgreSQL and S3 (moto). Each is made for one storm and removed after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from tests import s3
from tests.postgres import new_database
from tests.reliability.storm import Target, local_files

NAMES = ("sqlite", "postgres", "postgres-s3")
S3_PREFIX = "uploads/"
S3_PART_SIZE = 5 * 1024 * 1024


def s3_stored(endpoint: str, bucket: str, _data_dir: Path) -> list[str]:
    objects = s3.object_keys(endpoint, bucket, S3_PREFIX)
    parts = [
        f"multipart upload {key}" for key, _ in s3.multipart_uploads(endpoint, bucket, S3_PREFIX)
    ]
    return objects + parts


@contextmanager
def target(name: str, moto_endpoint: Callable[[], str]) -> Iterator[Target]:
    """The configuration ``name`` (one of ``NAMES``); ``moto_endpoint`` gives the S3 server's URL
    when it is needed."""
    if name not in NAMES:
        raise ValueError(f"unknown configuration {name!r}: one of {', '.join(NAMES)}")
    if name == "sqlite":
        yield Target(name, {}, local_files)
        return
    with new_database("storm") as url:
        env = {"UPLOAD_DATABASE_URL": url, "UPLOAD_LOCKER": "postgres"}
        if name == "postgres":
            yield Target(name, env, local_files)
            return
        endpoint = moto_endpoint()
        bucket = s3.new_bucket(endpoint)
        try:
            env.update(
                UPLOAD_STORAGE="s3",
                UPLOAD_S3_BUCKET=bucket,
                UPLOAD_S3_ENDPOINT_URL=endpoint,
                UPLOAD_S3_REGION=s3.REGION,
                UPLOAD_S3_PREFIX=S3_PREFIX,
                UPLOAD_S3_PART_SIZE=str(S3_PART_SIZE),
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",
            )
            yield Target(name, env, partial(s3_stored, endpoint, bucket))
        finally:
            s3.empty_bucket(endpoint, bucket)  # moto keeps every byte in its memory
