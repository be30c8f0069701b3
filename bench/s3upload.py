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

- direct: the same file straight to the bucket as Uppy's AwsS3 plugin sends it, through the
  service's Companion endpoints (docs/direct-uploads.md): ``POST /s3/multipart``, then for each
  5 MiB part (Uppy's size) a signed URL from the service and a ``PUT`` of the part to moto, by
  sendfile, ``DIRECT_CONCURRENCY`` parts at a time, then ``complete``; the time is from the first
  request to the ``complete`` answer, and until ``ready``. The server's CPU over it (it sees no
  file bytes) goes to the JSON. Checked: the sha256 and the object's size.

Between the sides the previous side's objects are deleted (moto spools them to files, which go with
them) and dirty pages are flushed. moto's own CPU on each side goes to the JSON: it is one Python
process, so on a small machine it is likely the limit of both.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench import client, procfs, s3
from bench.client import ClientError, Connection
from bench.config import GB, MB, S3_MAX_SIZE, S3_PART_SIZE, MiB
from bench.scenarios import Context, Extra, Measured
from bench.servers import Launch, RunningServer

READY_POLL = 0.01  # seconds between GETs of the upload's state after the 204
DIRECT_PART = 5 * MiB  # @uppy/aws-s3's part size for anything up to about 48 GiB
DIRECT_CONCURRENCY = 4  # parts in flight at once: our S3 store's default for a tus upload
BOTO3_KEY = "boto3/upload.bin"
_turns = itertools.count()  # the order of the sides rotates by measurement
SIDES = ("service", "boto3", "direct")


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


def _json(reply: client.Reply, what: str) -> Any:
    if reply.status != 200:
        raise ClientError(f"{what} answered {reply.status}: {reply.body[:200]!r}")
    return json.loads(reply.body)


def _send_parts(
    server: RunningServer, started: dict[str, str], source: str, size: int, timeout: float
) -> list[dict[str, object]]:
    """Every part, signed by the service and PUT to the bucket, ``DIRECT_CONCURRENCY`` at once."""
    numbers = list(range(1, -(-size // DIRECT_PART) + 1))
    etags: dict[int, str] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()
    query = urlencode({"key": started["key"]})

    def work() -> None:
        with Connection(server.base_url, timeout) as service, open(source, "rb") as file:
            bucket: Connection | None = None
            try:
                while True:
                    with lock:
                        if not numbers or failures:
                            return
                        number = numbers.pop(0)
                    signed = _json(
                        service.request(
                            "GET", f"/s3/multipart/{started['uploadId']}/{number}?{query}", {}
                        ),
                        f"signing part {number}",
                    )
                    url = urlsplit(signed["url"])
                    if bucket is None:
                        bucket = Connection(f"{url.scheme}://{url.netloc}", timeout)
                    offset = (number - 1) * DIRECT_PART
                    count = min(DIRECT_PART, size - offset)
                    put = bucket.send_file(
                        "PUT", f"{url.path}?{url.query}", {}, file, offset, count
                    )
                    if put.status != 200 or "etag" not in put.headers:
                        raise ClientError(f"PUT of part {number} answered {put.status}")
                    with lock:
                        etags[number] = put.headers["etag"].strip('"')
            except BaseException as exc:
                with lock:
                    failures.append(exc)
            finally:
                if bucket is not None:
                    bucket.close()

    threads = [threading.Thread(target=work) for _ in range(DIRECT_CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise ClientError(f"a direct part failed: {failures[0]!r}")
    return [{"PartNumber": number, "ETag": etags[number]} for number in sorted(etags)]


def _direct(ctx: Context, server: RunningServer, launch: Launch) -> _Side:
    target = launch.s3
    assert target is not None
    size, timeout = ctx.config.single_bytes, ctx.config.request_timeout
    json_type = {"Content-Type": "application/json"}
    cpu_before = procfs.cpu_times(server.pid).total
    moto_before = procfs.cpu_times(target.pid).total
    began = time.perf_counter()
    with Connection(server.base_url, timeout) as conn:
        body = json.dumps({"filename": "bench.bin", "type": "application/octet-stream"})
        started = _json(
            conn.request("POST", "/s3/multipart", json_type, body.encode()), "POST /s3/multipart"
        )
    parts = _send_parts(server, started, str(ctx.single_source), size, timeout)
    with Connection(server.base_url, timeout) as conn:
        path = f"/s3/multipart/{started['uploadId']}/complete?{urlencode({'key': started['key']})}"
        done = _json(
            conn.request("POST", path, json_type, json.dumps({"parts": parts}).encode()),
            "complete",
        )
    completed = time.perf_counter()
    upload = _wait_ready(server, str(done["id"]), timeout)
    ready = time.perf_counter()
    server_cpu = procfs.cpu_times(server.pid).total - cpu_before
    moto_cpu = procfs.cpu_times(target.pid).total - moto_before
    if upload.get("sha256") != ctx.single_digests().sha256:
        raise ClientError(f"the direct upload's sha256 is {upload.get('sha256')}, not the file's")
    _check_object(
        s3.object_info(target.endpoint, target.bucket, started["key"]), size, None, "the direct"
    )
    gb = size / GB
    return _Side(
        completed - began,
        {
            "ready_seconds": ready - began,
            "server_cpu_s_per_gb": server_cpu / gb,
            "moto_cpu_s_per_gb": moto_cpu / gb,
            "parts": len(parts),
            "concurrency": DIRECT_CONCURRENCY,
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
    turn = next(_turns)
    order = SIDES[turn % len(SIDES) :] + SIDES[: turn % len(SIDES)]
    server = launch.start()
    try:
        noise = procfs.Noise(server.pid, *launch.helper_pids)
        sides: dict[str, _Side] = {}
        for side in order:
            if side == "service":
                sides[side] = _through_service(ctx, server, launch)
                s3.empty_bucket(target.endpoint, target.bucket)
            elif side == "direct":
                sides[side] = _direct(ctx, server, launch)
                s3.empty_bucket(target.endpoint, target.bucket)
            else:
                sides[side] = _with_boto3(ctx, target)
            os.sync()  # one side's writeback does not land in the next's
        server.check_alive()
        foreign = noise.foreign_cores()
        moto = procfs.memory(target.pid)
    finally:
        server.stop()
        server.remove_data()
    ours, theirs, direct = sides["service"], sides["boto3"], sides["direct"]
    size = ctx.config.single_bytes
    ours_rate, theirs_rate = size / ours.seconds / MB, size / theirs.seconds / MB
    direct_rate = size / direct.seconds / MB
    ready = float(ours.extras["ready_seconds"])
    direct_ready = float(direct.extras["ready_seconds"])
    extras: dict[str, Extra] = {
        "order": ", ".join(order),
        "seconds": ours.seconds,
        "boto3_seconds": theirs.seconds,
        "direct_seconds": direct.seconds,
        **ours.extras,
        **{f"boto3_{key}": value for key, value in theirs.extras.items()},
        **{f"direct_{key}": value for key, value in direct.extras.items()},
        "moto_peak_rss_mib": moto.hwm_max / MiB,
        "foreign_cores": round(foreign, 3),
    }
    return Measured(
        {
            "s3.ours": ours_rate,
            "s3.ready": size / ready / MB,
            "s3.boto3": theirs_rate,
            "s3.ratio": ours_rate / theirs_rate,
            "s3.direct": direct_rate,
            "s3.direct_ready": size / direct_ready / MB,
            "s3.direct_ratio": (size / direct_ready) / (size / ready),
            "s3.rss": float(ours.extras["peak_rss_mib"]),
            "s3.cpu": float(ours.extras["server_cpu_s"]) / (size / GB),
        },
        extras,
    )
