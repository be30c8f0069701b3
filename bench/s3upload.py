"""Scenario 8, ``s3``: one upload to S3 through our service against boto3's own upload of the same
file to the same object store, in the same measurement.

The measurement has a moto server of its own (``bench/s3.py``) and our server on a fresh bucket of
it (``ours-s3``). Both sides run one after the other, the order alternating by measurement:

- the service: POST an upload of ``single_bytes``, then scenario 1's single PATCH (``curl -T``);
  the time is curl's ``time_total`` (until the 204), and until ``GET /api/uploads/{id}`` shows
  ``ready`` (polled every 10 ms from the 204 on). The server's CPU over the PATCH and its peak RSS
  (the largest ``VmHWM`` of its process tree) after. Checked: the ``sha256`` the service reports
  is the file's, and the object in the bucket has the file's size and the ETag its 8 MiB parts
  make.
- boto3: ``upload_file`` of the same file to a fresh bucket with the default ``TransferConfig``
  (8 MiB parts, 10 threads), in a process of its own that times the call alone
  (``bench/apps/boto3_upload.py``); the object is checked the same way.

Between the two the first side's objects are deleted (moto spools them to files, which go with
them) and dirty pages are flushed. moto's own CPU on each side goes to the JSON: it is one Python
process, so on a small machine it is likely the limit of both.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from bench import client, procfs, s3
from bench.client import ClientError, Connection
from bench.config import GB, MB, S3_MAX_SIZE, S3_PART_SIZE, MiB
from bench.scenarios import Context, Extra, Measured
from bench.servers import Launch, RunningServer

READY_POLL = 0.01  # seconds between GETs of the upload's state after the 204
BOTO3_KEY = "boto3/upload.bin"
_turns = itertools.count()  # the order of the two sides alternates by measurement


@dataclass(frozen=True, slots=True)
class _Side:
    seconds: float
    extras: dict[str, Extra]


def _upload_state(conn: Connection, upload_id: str) -> dict[str, Any]:
    reply = conn.request("GET", f"/api/uploads/{upload_id}", {})
    if reply.status != 200:
        raise ClientError(f"GET /api/uploads/{upload_id} answered {reply.status}")
    document = json.loads(reply.body)
    if not isinstance(document, dict):
        raise ClientError(f"GET /api/uploads/{upload_id} answered {reply.body[:200]!r}")
    return document


def _wait_ready(server: RunningServer, upload_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    # a new connection: the one of the POST may have been closed as idle during the PATCH
    with Connection(server.base_url, timeout) as conn:
        while True:
            upload = _upload_state(conn, upload_id)
            state = upload.get("state")
            if state == "ready":
                return upload
            if state not in ("receiving", "verifying"):
                raise ClientError(f"upload {upload_id} is {state}: {upload.get('failure')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"upload {upload_id} still {state} after {timeout:g} s")
            time.sleep(READY_POLL)


def _check_object(info: s3.ObjectInfo, size: int, etag: str | None, who: str) -> None:
    if info.size != size:
        raise ClientError(f"{who} object holds {info.size} bytes, not {size}")
    if etag is not None and info.etag != etag:
        raise ClientError(f"{who} object's ETag is {info.etag}, the file's parts make {etag}")


def _service_part_size(launch: Launch) -> int:
    """The part size our S3 store picks with this spec's settings (an --ours-env may change
    them), as the service computes it."""
    from upload_service.storage.s3.layout import choose_part_size

    env = launch.spec.env
    largest = int(env.get("UPLOAD_MAX_SIZE", S3_MAX_SIZE))
    return choose_part_size(largest, int(env.get("UPLOAD_S3_PART_SIZE", S3_PART_SIZE)))


def _through_service(ctx: Context, server: RunningServer, launch: Launch) -> _Side:
    target = launch.s3
    assert target is not None
    size, timeout = ctx.config.single_bytes, ctx.config.request_timeout
    with Connection(server.base_url, timeout) as conn:
        path = client.create(conn, server.spec.files_path, size)
    upload_id = path.rstrip("/").rsplit("/", 1)[-1]
    cpu_before = procfs.cpu_times(server.pid).total
    moto_before = procfs.cpu_times(target.pid).total
    result = client.curl_patch(server.base_url + path, ctx.single_source, 0, size, timeout)
    answered = time.perf_counter()
    upload = _wait_ready(server, upload_id, timeout)
    ready = result.seconds + (time.perf_counter() - answered)
    server_cpu = procfs.cpu_times(server.pid).total - cpu_before
    moto_cpu = procfs.cpu_times(target.pid).total - moto_before
    server.remember_tree()
    peak = procfs.memory(server.pid)

    digests = ctx.single_digests()
    if upload.get("sha256") != digests.sha256:
        raise ClientError(f"the service reports sha256 {upload.get('sha256')}, not the file's")
    part_size = _service_part_size(launch)
    etag = digests.multipart_etag() if part_size == digests.part_size else None
    key = launch.spec.env.get("UPLOAD_S3_PREFIX", "") + upload_id
    _check_object(s3.object_info(target.endpoint, target.bucket, key), size, etag, "the service's")
    gb = size / GB
    return _Side(
        result.seconds,
        {
            "ready_seconds": ready,
            "server_cpu_s": server_cpu,
            "peak_rss_mib": peak.hwm_max / MiB,
            "processes": peak.processes,
            "client_cpu_s_per_gb": result.cpu_seconds / gb,
            "moto_cpu_s_per_gb": moto_cpu / gb,
            "part_size": part_size,
            "etag_checked": int(etag is not None),
        },
    )


def _with_boto3(ctx: Context, target: s3.S3Target) -> _Side:
    size, timeout = ctx.config.single_bytes, ctx.config.request_timeout
    digests = ctx.single_digests()
    with s3.fresh_bucket(target.endpoint) as bucket:
        moto_before = procfs.cpu_times(target.pid).total
        result = s3.boto3_upload(target.endpoint, bucket, BOTO3_KEY, ctx.single_source, timeout)
        moto_cpu = procfs.cpu_times(target.pid).total - moto_before
        etag: str | None = None
        if result.part_size == digests.part_size:
            etag = digests.multipart_etag() if size >= result.threshold else digests.md5
        _check_object(s3.object_info(target.endpoint, bucket, BOTO3_KEY), size, etag, "boto3's")
    gb = size / GB
    return _Side(
        result.seconds,
        {
            "client_cpu_s_per_gb": result.cpu_seconds / gb,
            "moto_cpu_s_per_gb": moto_cpu / gb,
            "threads": result.threads,
            "part_size": result.part_size,
            "etag_checked": int(etag is not None),
        },
    )


def s3_vs_boto3(ctx: Context, launch: Launch) -> Measured:
    target = launch.s3
    if target is None:
        raise ClientError(f"{launch.spec.label} has no S3 store to compare")
    ctx.single_digests()  # hashed before the clock of either side starts
    service_first = next(_turns) % 2 == 0
    server = launch.start()
    try:
        noise = procfs.Noise(server.pid, *launch.helper_pids)
        sides: dict[str, _Side] = {}
        for side in ("service", "boto3") if service_first else ("boto3", "service"):
            if side == "service":
                sides[side] = _through_service(ctx, server, launch)
                s3.empty_bucket(target.endpoint, target.bucket)
            else:
                sides[side] = _with_boto3(ctx, target)
            os.sync()  # the first side's writeback does not land in the second's
        server.check_alive()
        foreign = noise.foreign_cores()
        moto = procfs.memory(target.pid)
    finally:
        server.stop()
        server.remove_data()
    ours, theirs = sides["service"], sides["boto3"]
    size = ctx.config.single_bytes
    ours_rate, theirs_rate = size / ours.seconds / MB, size / theirs.seconds / MB
    ready = float(ours.extras["ready_seconds"])
    extras: dict[str, Extra] = {
        "order": "service first" if service_first else "boto3 first",
        "seconds": ours.seconds,
        "boto3_seconds": theirs.seconds,
        **ours.extras,
        **{f"boto3_{key}": value for key, value in theirs.extras.items()},
        "moto_peak_rss_mib": moto.hwm_max / MiB,
        "foreign_cores": round(foreign, 3),
    }
    return Measured(
        {
            "s3.ours": ours_rate,
            "s3.ready": size / ready / MB,
            "s3.boto3": theirs_rate,
            "s3.ratio": ours_rate / theirs_rate,
            "s3.rss": float(ours.extras["peak_rss_mib"]),
            "s3.cpu": float(ours.extras["server_cpu_s"]) / (size / GB),
        },
        extras,
    )
