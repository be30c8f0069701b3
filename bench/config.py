"""Sizes, rates and durations of one benchmark run: the full preset and the ``--smoke`` preset."""

from __future__ import annotations

from dataclasses import dataclass, replace

MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1_000_000
GB = 1_000_000_000
# UPLOAD_MAX_SIZE of ours-s3: small enough that its S3 store keeps UPLOAD_S3_PART_SIZE's default
# 8 MiB parts (10,000 of them must hold the largest upload; S3's 5 TiB would need 525 MiB parts)
S3_MAX_SIZE = 10 * GiB
# ... those 8 MiB, which are also the parts of boto3's default TransferConfig (scenario 8, s3)
S3_PART_SIZE = 8 * MiB


@dataclass(frozen=True, slots=True)
class Config:
    reps: int
    single_bytes: int  # scenario 1: one upload, one PATCH (curl -T) and in chunks
    chunk_bytes: int  # scenario 1 and 6: PATCH size on one keep-alive connection
    concurrent_uploads: int  # scenario 2
    concurrent_bytes: int  # ... bytes of each
    latency_uploads: int  # scenario 3: uploads running while the probe runs
    latency_bytes: int  # ... bytes of each
    probe_interval: float  # seconds between probe requests
    min_probe_seconds: float  # probe at least this long, even if the uploads finish sooner
    slow_uploads: int  # scenario 4
    slow_rate: int  # ... bytes per second each
    slow_seconds: float  # ... how long each is held open
    lockwait_rate: int  # scenario 7: bytes per second of the PATCH on the replica that is killed
    lockwait_seconds: float  # ... how long that PATCH would run (it is killed well before)
    lockwait_timeout: float  # ... seconds after the kill before the other replica is given up on
    request_timeout: float  # seconds before one request is given up
    starts: int  # scenario 10: timed starts of each server (after one that makes its database)
    many_base: int  # scenario 11: slow uploads held open first ...
    many_uploads: int  # ... then this many, on the same process
    many_rate: int  # ... bytes per second each
    many_seconds: float  # ... how long each is held open
    rows: int  # scenario 12: uploads already in the table
    rows_heads: int  # ... HEADs timed on each table
    rows_pages: int  # ... listing pages timed, first and mid-table each
    requests_clients: tuple[int, ...]  # scenario 13: the loads, in concurrent clients ...
    requests_seconds: float  # ... how long each load repeats its tus cycles
    requests_kind_seconds: float  # ... each phase of one kind of request (the first load's clients)

    @property
    def slow_bytes(self) -> int:
        return int(self.slow_rate * self.slow_seconds)

    @property
    def many_bytes(self) -> int:
        return int(self.many_rate * self.many_seconds)

    @property
    def lockwait_bytes(self) -> int:
        return int(self.lockwait_rate * self.lockwait_seconds)

    @property
    def source_bytes(self) -> int:
        """The random source file must hold the largest single upload."""
        return max(
            self.single_bytes,
            self.concurrent_bytes,
            self.latency_bytes,
            self.slow_bytes,
            self.lockwait_bytes,
            self.many_bytes,
        )


FULL = Config(
    reps=3,
    single_bytes=1024 * MiB,
    chunk_bytes=50 * MiB,
    concurrent_uploads=8,
    concurrent_bytes=256 * MiB,
    latency_uploads=4,
    latency_bytes=512 * MiB,
    probe_interval=0.010,
    min_probe_seconds=0.0,
    slow_uploads=32,
    slow_rate=2 * MiB,
    slow_seconds=10.0,
    lockwait_rate=4 * MiB,
    lockwait_seconds=10.0,
    lockwait_timeout=60.0,
    request_timeout=600.0,
    starts=5,
    many_base=32,
    many_uploads=256,
    many_rate=256 * 1024,
    many_seconds=10.0,
    rows=1_000_000,
    rows_heads=2000,
    rows_pages=200,
    requests_clients=(50, 200),
    requests_seconds=20.0,
    requests_kind_seconds=5.0,
)

SMOKE = Config(
    reps=1,
    single_bytes=8 * MiB,
    chunk_bytes=2 * MiB,
    concurrent_uploads=4,
    concurrent_bytes=2 * MiB,
    latency_uploads=2,
    latency_bytes=4 * MiB,
    probe_interval=0.010,
    min_probe_seconds=0.2,
    slow_uploads=4,
    slow_rate=1 * MiB,
    slow_seconds=0.5,
    lockwait_rate=2 * MiB,
    lockwait_seconds=4.0,
    lockwait_timeout=30.0,
    request_timeout=60.0,
    starts=1,
    many_base=4,
    many_uploads=16,
    many_rate=256 * 1024,
    many_seconds=0.3,
    rows=1_000,
    rows_heads=100,
    rows_pages=10,
    requests_clients=(4,),
    requests_seconds=1.0,
    requests_kind_seconds=0.5,
)


def build_config(
    *,
    smoke: bool,
    size_mib: int | None,
    reps: int | None,
    requests_clients: tuple[int, ...] | None = None,
) -> Config:
    """The preset, scaled by ``--size-mib`` (the single upload; concurrent uploads get a quarter
    of it, latency-load uploads a half, chunks stay at their preset size but never exceed it);
    ``--requests-clients`` replaces the loads of scenario 13."""
    config = SMOKE if smoke else FULL
    if requests_clients:
        config = replace(config, requests_clients=requests_clients)
    if size_mib is not None:
        size = size_mib * MiB
        config = replace(
            config,
            single_bytes=size,
            chunk_bytes=min(config.chunk_bytes, size),
            concurrent_bytes=max(size // 4, 1),
            latency_bytes=max(size // 2, 1),
        )
    if reps is not None:
        config = replace(config, reps=reps)
    return config
