"""The reference client of the ``s3`` scenario: boto3's own ``upload_file`` of one file, with the
default ``TransferConfig`` (8 MiB parts above an 8 MiB threshold, 10 threads), as a user would.

Only the call is timed: imports and the client are made before the clock starts. Prints one line
of JSON: the wall seconds, this process's CPU seconds (user + system, all threads) meanwhile, and
the transfer settings in effect. Credentials and configuration come from the environment the
bench gives it (made-up keys, no AWS configuration file).

    python bench/apps/boto3_upload.py ENDPOINT REGION BUCKET KEY FILE
"""

from __future__ import annotations

import json
import os
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig


def main(argv: list[str]) -> int:
    endpoint, region, bucket, key, path = argv
    s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region)
    config = TransferConfig()
    before = os.times()
    started = time.perf_counter()
    s3.upload_file(path, bucket, key, Config=config)
    seconds = time.perf_counter() - started
    after = os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "max_concurrency": config.max_request_concurrency,  # max_concurrency is its alias
        "multipart_chunksize": config.multipart_chunksize,
        "multipart_threshold": config.multipart_threshold,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
