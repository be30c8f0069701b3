"""The scenarios: each takes one freshly started server and returns its measured values.

Throughput is in MB/s (10^6 bytes per second of wall time from the first body byte to the last
answer); CPU in server CPU-seconds (user + system, the whole process tree) per GB (10^9 bytes).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import client, procfs
from bench.client import Connection, Unsupported
from bench.config import GB, MB, S3_PART_SIZE, Config, MiB
from bench.servers import Role, RunningServer

Extra = float | int | str


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    scenario: str
    label: str
    unit: str
    higher_is_better: bool
    subject: str = ""  # what the row measures when not the server (shown in the server column)


@dataclass(frozen=True, slots=True)
class Measured:
    values: dict[str, float]  # metric key -> value
    extras: dict[str, Extra] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)  # metric key -> why not measured


@dataclass(slots=True)
class Context:
    config: Config
    source: Path  # random bytes, at least config.source_bytes long
    single_source: Path  # exactly config.single_bytes long (curl -T sends a whole file)
    cache: Path = Path()  # the run's cache directory (--cache-dir): what scenarios build once
    pg_url: str = ""  # --pg-url: the PostgreSQL server of ours-pg, to connect to as its admin
    _checksums: list[str] | None = None
    _digests: client.FileDigests | None = None

    def checksums(self) -> list[str]:
        if self._checksums is None:
            size, chunk = self.config.single_bytes, self.config.chunk_bytes
            self._checksums = client.chunk_checksums(self.source, size, chunk)
        return self._checksums

    def single_digests(self) -> client.FileDigests:
        """sha256 and S3 ETags of ``single_source`` (read once, outside any measurement)."""
        if self._digests is None:
            self._digests = client.file_digests(self.single_source, S3_PART_SIZE)
        return self._digests


Scenario = Callable[[Context, RunningServer], Measured]


def _mib(size: int) -> str:
    return f"{size / MiB:g} MiB"


def _kib(size: int) -> str:
    return f"{size / 1024:g} KiB"


# scenario 13 (bench/request_cost.py): each kind of tus request alone, in the table's order
REQUEST_KINDS = ("POST", "PATCH", "HEAD", "DELETE", "GET")


def request_key(group: str, value: str) -> str:
    """A metric of scenario 13: ``group`` is a load (``c50``: 50 clients) or a kind (``post``)."""
    return f"requests.{group}.{value}"


# ... the figures of each load of cycles: (value, label, unit, higher is better)
REQUEST_LOAD_VALUES = (
    ("uploads", "tus cycles", "uploads/s", True),
    ("cpu", "server CPU per upload", "ms", False),
    ("head_p50", "HEAD p50 in the cycle", "ms", False),
    ("head_p99", "HEAD p99 in the cycle", "ms", False),
    ("errors", "errors in the cycles", "requests", False),
    ("shed", "503s in the cycles", "requests", False),
)


def _request_metrics(c: Config) -> list[Metric]:
    found = [
        Metric(request_key(f"c{n}", value), "requests", f"13 {label}, {n} clients", unit, up)
        for n in c.requests_clients
        for value, label, unit, up in REQUEST_LOAD_VALUES
    ]
    load = f"{c.requests_clients[0]} clients"
    for kind in REQUEST_KINDS:
        group = kind.lower()
        rate = f"13 {kind} alone, {load}"
        cpu = f"13 server CPU per {kind}, {load}"
        found.append(Metric(request_key(group, "rps"), "requests", rate, "req/s", True))
        found.append(Metric(request_key(group, "cpu"), "requests", cpu, "ms", False))
    return found


def metrics(config: Config) -> list[Metric]:
    c = config
    n, each = c.concurrent_uploads, _mib(c.concurrent_bytes)
    load = f"{c.latency_uploads} uploads running"
    single = _mib(c.single_bytes)
    return [
        Metric("single", "single", f"1 one PATCH of {single} (curl -T)", "MB/s", True),
        Metric(
            "chunked", "chunked", f"1 {_mib(c.chunk_bytes)} PATCHes, one connection", "MB/s", True
        ),
        Metric("concurrent", "concurrent", f"2 {n} concurrent x {each}, aggregate", "MB/s", True),
        Metric("latency.p50", "latency", f"3 GET p50, {load}", "ms", False),
        Metric("latency.p99", "latency", f"3 GET p99, {load}", "ms", False),
        Metric("latency.max", "latency", f"3 GET max, {load}", "ms", False),
        Metric(
            "rss",
            "rss",
            f"4 peak RSS, {c.slow_uploads} uploads at {_mib(c.slow_rate)}/s",
            "MiB",
            False,
        ),
        Metric("cpu.single", "single", "5 server CPU per GB, one PATCH", "s/GB", False),
        Metric(
            "cpu.concurrent", "concurrent", f"5 server CPU per GB, {n} concurrent", "s/GB", False
        ),
        Metric("checksum.on", "checksum", "6 sha256 on every PATCH", "MB/s", True),
        Metric("checksum.off", "checksum", "6 same PATCHes, no checksum", "MB/s", True),
        Metric(
            "lockwait.patch", "lockwait", "7 killed replica's lock: until B's PATCH", "ms", False
        ),
        Metric("lockwait.head", "lockwait", "7 killed replica's lock: until B's HEAD", "ms", False),
        Metric("form.form", "form", f"9 form upload of {single} (curl -F)", "MB/s", True),
        Metric("form.tus", "form", "9 same file, one PATCH (curl -T)", "MB/s", True),
        Metric("s3.ours", "s3", f"8 S3: one PATCH of {single} (curl -T), until 204", "MB/s", True),
        Metric("s3.ready", "s3", "8 S3: the same, until GET shows ready", "MB/s", True),
        Metric(
            "s3.boto3",
            "s3",
            f"8 S3: upload_file of the same {single}",
            "MB/s",
            True,
            subject="boto3 (default TransferConfig)",
        ),
        Metric("s3.ratio", "s3", "8 S3: service / boto3, per repetition", "x", True),
        Metric(
            "s3.direct",
            "s3",
            f"8 S3: the same {single} direct to the bucket (Uppy's way), until complete",
            "MB/s",
            True,
        ),
        Metric("s3.direct_ready", "s3", "8 S3: the direct upload, until ready", "MB/s", True),
        Metric(
            "s3.direct_ratio",
            "s3",
            "8 S3: direct / tus through the service, until ready",
            "x",
            True,
        ),
        Metric("s3.rss", "s3", "8 S3: server peak RSS, one PATCH", "MiB", False),
        Metric("s3.cpu", "s3", "8 S3: server CPU per GB, one PATCH", "s/GB", False),
        Metric("start.seconds", "start", "10 cold start: command to first 200", "s", False),
        Metric("start.rss", "start", "10 idle RSS, 1 s after the first 200", "MiB", False),
        Metric("rows.head_empty", "rows", "12 HEAD p99, empty table", "ms", False),
        Metric("rows.head", "rows", f"12 HEAD p99, {c.rows:,} uploads in the table", "ms", False),
        Metric("rows.head_ratio", "rows", f"12 HEAD p99, {c.rows:,} rows / empty", "x", False),
        Metric("rows.first_page", "rows", f"12 list p99, first page, {c.rows:,} rows", "ms", False),
        Metric(
            "rows.deep_page", "rows", f"12 list p99, a page mid-table, {c.rows:,} rows", "ms", False
        ),
        Metric(
            "many.rss",
            "many",
            f"11 peak RSS, {c.many_uploads} uploads at {_kib(c.many_rate)}/s",
            "MiB",
            False,
        ),
        Metric(
            "many.per_upload",
            "many",
            f"11 RSS per added upload, {c.many_base} to {c.many_uploads} at {_kib(c.many_rate)}/s",
            "KiB",
            False,
        ),
        *_request_metrics(c),
    ]


def _cpu(server: RunningServer) -> float:
    return procfs.cpu_times(server.pid).total


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def single(ctx: Context, server: RunningServer) -> Measured:
    size = ctx.config.single_bytes
    with Connection(server.base_url, ctx.config.request_timeout) as conn:
        path = client.create(conn, server.spec.files_path, size)
    before = _cpu(server)
    result = client.curl_patch(
        server.base_url + path, ctx.single_source, 0, size, ctx.config.request_timeout
    )
    server_cpu = _cpu(server) - before
    return Measured(
        {"single": size / result.seconds / MB, "cpu.single": server_cpu / (size / GB)},
        {"seconds": result.seconds, "client_cpu_s_per_gb": result.cpu_seconds / (size / GB)},
    )


def _chunked_once(
    ctx: Context, server: RunningServer, checksums: list[str] | None
) -> tuple[float, float]:
    """(seconds, client CPU seconds) of one upload in chunks on one connection."""
    size, chunk = ctx.config.single_bytes, ctx.config.chunk_bytes
    with (
        Connection(server.base_url, ctx.config.request_timeout) as conn,
        ctx.source.open("rb") as f,
    ):
        path = client.create(conn, server.spec.files_path, size)
        cpu_before = _own_cpu()
        started = time.perf_counter()
        client.chunked_upload(conn, path, f, size, chunk, checksums)
        seconds = time.perf_counter() - started
        return seconds, _own_cpu() - cpu_before


def chunked(ctx: Context, server: RunningServer) -> Measured:
    size = ctx.config.single_bytes
    seconds, client_cpu = _chunked_once(ctx, server, None)
    return Measured(
        {"chunked": size / seconds / MB},
        {"seconds": seconds, "client_cpu_s_per_gb": client_cpu / (size / GB)},
    )


def _parallel(
    ctx: Context, server: RunningServer, count: int, size: int, rate: float | None
) -> float:
    """Create ``count`` uploads of ``size`` bytes, then PATCH them all at once, one thread and
    connection each; the wall seconds from the common start to the last answer."""
    with Connection(server.base_url, ctx.config.request_timeout) as conn:
        paths = [client.create(conn, server.spec.files_path, size) for _ in range(count)]
    start = threading.Barrier(count + 1)

    def one(path: str) -> None:
        with (
            Connection(server.base_url, ctx.config.request_timeout) as conn,
            ctx.source.open("rb") as f,
        ):
            conn.request("HEAD", path, client.TUS)  # connect before the clock starts
            start.wait(timeout=60)
            client.patch(conn, path, f, 0, size, rate=rate)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(one, path) for path in paths]
        start.wait(timeout=60)
        started = time.perf_counter()
        for future in futures:
            future.result(timeout=ctx.config.request_timeout)
        return time.perf_counter() - started


def concurrent(ctx: Context, server: RunningServer) -> Measured:
    count, size = ctx.config.concurrent_uploads, ctx.config.concurrent_bytes
    cpu_before, own_before = _cpu(server), _own_cpu()
    seconds = _parallel(ctx, server, count, size, None)
    server_cpu, own = _cpu(server) - cpu_before, _own_cpu() - own_before
    total = count * size
    return Measured(
        {"concurrent": total / seconds / MB, "cpu.concurrent": server_cpu / (total / GB)},
        {"seconds": seconds, "client_cpu_s_per_gb": own / (total / GB)},
    )


def _percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextmanager
def _probing(ctx: Context, server: RunningServer) -> Iterator[client.Probe]:
    """The trivial GET every ``probe_interval`` seconds while the body of the ``with`` runs."""
    probe = client.Probe(server.base_url, server.spec.probe_path, ctx.config.probe_interval, 10.0)
    probe.start()
    try:
        yield probe
    finally:
        probe.stop()


def latency(ctx: Context, server: RunningServer) -> Measured:
    cfg = ctx.config
    with _probing(ctx, server) as probe:
        began = time.perf_counter()
        seconds = _parallel(ctx, server, cfg.latency_uploads, cfg.latency_bytes, None)
        rest = cfg.min_probe_seconds - (time.perf_counter() - began)
        if rest > 0:
            time.sleep(rest)
    if not probe.latencies:
        raise client.ClientError(f"the probe got no answer ({probe.errors} errors)")
    ms = [value * 1000 for value in probe.latencies]
    return Measured(
        {
            "latency.p50": _percentile(ms, 0.50),
            "latency.p99": _percentile(ms, 0.99),
            "latency.max": max(ms),
        },
        {
            "probes": len(ms),
            "probe_errors": probe.errors,
            "load_MB_per_s": cfg.latency_uploads * cfg.latency_bytes / seconds / MB,
        },
    )


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.peak_total = 0
        self._stop_sampling = threading.Event()

    def run(self) -> None:
        while not self._stop_sampling.wait(0.1):
            self.peak_total = max(self.peak_total, procfs.memory(self.pid).rss_total)

    def stop(self) -> None:
        self._stop_sampling.set()
        self.join(5)


def rss(ctx: Context, server: RunningServer) -> Measured:
    cfg = ctx.config
    baseline = procfs.memory(server.pid)
    sampler = _RssSampler(server.pid)
    sampler.start()
    try:
        seconds = _parallel(ctx, server, cfg.slow_uploads, cfg.slow_bytes, cfg.slow_rate)
    finally:
        sampler.stop()
    server.remember_tree()
    peak = procfs.memory(server.pid)
    return Measured(
        {"rss": peak.hwm_max / MiB},
        {
            "processes": peak.processes,
            "idle_rss_mib": baseline.rss_total / MiB,
            "sampled_peak_total_mib": sampler.peak_total / MiB,
            "hwm_total_mib": peak.hwm_total / MiB,
            "seconds": seconds,
        },
    )


def _held_open(ctx: Context, server: RunningServer, count: int) -> tuple[int, float]:
    """``count`` slow uploads held open together: the peak of the tree's summed RSS (sampled
    every 100 ms) and the seconds until the last answer."""
    cfg = ctx.config
    sampler = _RssSampler(server.pid)
    sampler.start()
    try:
        seconds = _parallel(ctx, server, count, cfg.many_bytes, cfg.many_rate)
    finally:
        sampler.stop()
    return sampler.peak_total, seconds


def many(ctx: Context, server: RunningServer) -> Measured:
    """Scenario 11: ``many_base`` slow uploads held open together, then ``many_uploads``, on the
    same process; what each added upload costs is the difference of the two peaks divided by the
    difference of the counts. (The first round also pays for what the first uploads allocate once,
    so the slope is the cost of one more upload, not of the first.)"""
    cfg = ctx.config
    server.remember_tree()
    idle = procfs.memory(server.pid).rss_total
    base_peak, base_seconds = _held_open(ctx, server, cfg.many_base)
    peak, seconds = _held_open(ctx, server, cfg.many_uploads)
    server.remember_tree()
    added = cfg.many_uploads - cfg.many_base
    return Measured(
        {"many.rss": peak / MiB, "many.per_upload": (peak - base_peak) / added / 1024},
        {
            "idle_rss_mib": idle / MiB,
            "base_peak_mib": base_peak / MiB,
            "base_seconds": base_seconds,
            "seconds": seconds,
            "hwm_max_mib": procfs.memory(server.pid).hwm_max / MiB,
        },
    )


def checksum(ctx: Context, server: RunningServer) -> Measured:
    """Chunked uploads with ``Upload-Checksum: sha256`` on every PATCH and without, on the same
    process (order alternating by the second); unsupported unless the server advertises it."""
    with Connection(server.base_url, ctx.config.request_timeout) as conn:
        if not client.advertises(conn, server.spec.files_path, "checksum"):
            raise Unsupported("checksum extension not advertised in Tus-Extension")
        if "sha256" not in client.checksum_algorithms(conn, server.spec.files_path):
            raise Unsupported("sha256 not in Tus-Checksum-Algorithm")
    digests = ctx.checksums()
    size = ctx.config.single_bytes
    runs: dict[str, float] = {}
    extras: dict[str, Extra] = {}
    order = [True, False] if int(time.time()) % 2 else [False, True]
    for with_checksum in order:
        # The trivial GET of scenario 3 beside each run: the event loop's stall figure.
        with _probing(ctx, server) as probe:
            seconds, _ = _chunked_once(ctx, server, digests if with_checksum else None)
        side = "on" if with_checksum else "off"
        runs[f"checksum.{side}"] = size / seconds / MB
        ms = [value * 1000 for value in probe.latencies]
        if ms:
            extras[f"probe_p99_ms_{side}"] = _percentile(ms, 0.99)
            extras[f"probe_max_ms_{side}"] = max(ms)
    extras["ratio_on_off"] = runs["checksum.on"] / runs["checksum.off"]
    return Measured(runs, extras)


def form(ctx: Context, server: RunningServer) -> Measured:
    """A form upload (``POST /api/uploads``, multipart/form-data) against the tus single PATCH
    of the same file, on the same process (order alternating by the second)."""
    size = ctx.config.single_bytes
    runs: dict[str, float] = {}
    order = ["form", "tus"] if int(time.time()) % 2 else ["tus", "form"]
    for kind in order:
        if kind == "form":
            result = client.curl_form(
                server.base_url + "/api/uploads",
                ctx.single_source,
                size,
                ctx.config.request_timeout,
            )
        else:
            with Connection(server.base_url, ctx.config.request_timeout) as conn:
                path = client.create(conn, server.spec.files_path, size)
            result = client.curl_patch(
                server.base_url + path, ctx.single_source, 0, size, ctx.config.request_timeout
            )
        runs[f"form.{kind}"] = size / result.seconds / MB
    return Measured(runs, {"ratio_form_tus": runs["form.form"] / runs["form.tus"]})


SCENARIOS: dict[str, Scenario] = {
    "single": single,
    "chunked": chunked,
    "concurrent": concurrent,
    "latency": latency,
    "rss": rss,
    "checksum": checksum,
    "form": form,
    "many": many,
}
# scenarios that start their own processes from a servers.Launch: replicas (bench/lockwait.py) ...
CLUSTER = ("lockwait",)
# ... and our server on S3 beside boto3's own upload to the same moto server (bench/s3upload.py)
S3 = ("s3",)
# ... and every server started again and again (bench/coldstart.py)
START = ("start",)
# ... and our server on an empty uploads table and on one of Config.rows rows (bench/rows.py)
ROWS = ("rows",)
# scenarios on one fresh server whose code lives in a module of its own: tus requests, not bytes
# (bench/request_cost.py), with a table of their own
REQUESTS = ("requests",)
NAMES = (*SCENARIOS, *CLUSTER, *S3, *START, *ROWS, *REQUESTS)  # the order of a run and of the table
# --only also takes "cpu": the two runs that measure server CPU per GB along with throughput
ALIASES = {"cpu": ("single", "concurrent")}


def applies(scenario: str, role: Role, *, s3: bool = False) -> bool:
    """Whether ``scenario`` is measured on a server of ``role`` (``s3``: our server on an S3
    store): the floors speak no checksums and no more tus than an upload needs, only our server
    has replicas that share uploads, and the S3 comparison needs the S3 store."""
    if scenario == "checksum" or scenario in REQUESTS:  # the floors are no tus servers
        return role is not Role.FLOOR
    if scenario == "form":  # our own endpoint: no peer or floor has it
        return role is Role.OURS
    if scenario in CLUSTER or scenario in ROWS:
        return role is Role.OURS
    if scenario in S3:
        return s3
    return True
