"""The benchmark suite (``bench/run``) runs end to end in ``--smoke`` mode, so it cannot rot.

Tiny sizes, one repetition, our server and the two floors only (peers need npm and PyPI and are
skipped with ``--no-peers``). No timing assertion: only that the run printed its table and wrote
JSON with a number for every metric of our server.

A second run covers the PostgreSQL variant (``ours-pg``, and ``lockwait`` with the postgres
locker) against the server at ``BENCH_PG_URL`` (default: the suite's own). It skips when that
server is unreachable, except under ``CI=true``, where it fails; and it skips while this checkout's
upload_service has no ``UPLOAD_LOCKER`` setting, i.e. before its PostgreSQL support is merged.

A third covers the S3 variant (``ours-s3``, on a moto server the bench starts) and the ``s3``
scenario, which compares it with boto3's own ``upload_file``; it skips without ``moto_server``
(fails under ``CI=true``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import pg, s3, scenarios
from bench import rows as rows_scenario
from bench.config import SMOKE, MiB
from bench.servers import Role

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e

OUR_METRICS = (
    "single",
    "chunked",
    "concurrent",
    "latency.p50",
    "latency.p99",
    "latency.max",
    "rss",
    "cpu.single",
    "cpu.concurrent",
    "checksum.on",
    "checksum.off",
    "lockwait.patch",
    "lockwait.head",
    "form.form",
    "form.tus",
    "start.seconds",
    "start.rss",
    "many.rss",
    "many.per_upload",
    "rows.head_empty",
    "rows.head",
    "rows.head_ratio",
    "rows.first_page",
    "rows.deep_page",
    # scenario 13 at the smoke run's one load of 4 clients, then each kind of request alone
    "requests.c4.uploads",
    "requests.c4.cpu",
    "requests.c4.head_p50",
    "requests.c4.head_p99",
    "requests.c4.errors",
    "requests.c4.shed",
    "requests.post.rps",
    "requests.post.cpu",
    "requests.patch.rps",
    "requests.patch.cpu",
    "requests.head.rps",
    "requests.head.cpu",
    "requests.delete.rps",
    "requests.delete.cpu",
    "requests.get.rps",
    "requests.get.cpu",
)


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason}; CI=true, so a missing component is a failure")
    pytest.skip(reason)


def _require_curl() -> None:
    if shutil.which("curl") is None:
        _missing("'curl' is not installed (the suite's single-PATCH scenario uses it)")


def _run_bench(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """``bench/run --smoke --no-peers ARGS`` into ``tmp_path``; its table and its JSON."""
    results = tmp_path / "results"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("UPLOAD_")}
    done = subprocess.run(
        [
            "bash",
            str(REPO / "bench" / "run"),
            "--smoke",
            "--no-peers",
            *args,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--results-dir",
            str(results),
        ],
        cwd=REPO,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"bench/run exited {done.returncode}:\n{done.stderr[-4000:]}"
    written = sorted(results.glob("*.json"))
    assert len(written) == 1, written
    document: dict[str, Any] = json.loads(written[0].read_text())
    assert not (tmp_path / "cache" / "work").exists() or not any(
        (tmp_path / "cache" / "work").iterdir()
    ), "scratch data left behind"
    return done.stdout, document


# The smoke run in two halves, run side by side by the suite's workers; together they are every
# scenario (``test_the_two_halves_cover_every_scenario``).
BULK = ("single", "chunked", "concurrent", "latency", "rss", "checksum", "lockwait", "form")
STARTS = ("start", "many", "rows", "requests")


def _of(scenario_names: tuple[str, ...]) -> list[str]:
    by_scenario = {metric.key: metric.scenario for metric in scenarios.metrics(SMOKE)}
    return [metric for metric in OUR_METRICS if by_scenario[metric] in scenario_names]


def _our_numbers(rows: dict[tuple[str, str], Any], metrics: list[str]) -> None:
    assert metrics
    for metric in metrics:
        row = rows[("ours", metric)]
        assert row["status"] == "ok", row
        assert isinstance(row["median"], float), row
        assert row["median"] >= 0, row


def test_the_two_halves_cover_every_scenario() -> None:
    assert sorted(BULK + STARTS) == sorted(
        name for name in scenarios.NAMES if scenarios.applies(name, Role.OURS)
    )
    assert sorted(_of(BULK) + _of(STARTS)) == sorted(OUR_METRICS)
    ours = {m.key for m in scenarios.metrics(SMOKE) if m.scenario not in ("s3",)}
    assert ours == set(OUR_METRICS), "a metric of our server that the smoke run does not check"


def test_bench_smoke_starts_many_uploads_rows_and_requests(tmp_path: Path) -> None:
    _require_curl()
    table, document = _run_bench(
        tmp_path, "--only", ",".join(STARTS), "--servers", "ours,asgi-floor,socket-floor"
    )
    assert "| upload_service |" in table, table
    rows = {(row["server"], row["metric"]): row for row in document["results"]}
    _our_numbers(rows, _of(STARTS))
    for server in ("asgi-floor", "socket-floor"):
        assert rows[(server, "many.per_upload")]["median"] > 0, rows[(server, "many.per_upload")]
    for extra in rows[("ours", "rows.head")]["extras"]:
        assert extra["rows"] == SMOKE.rows, extra
    assert ("asgi-floor", "rows.head") not in rows  # our server only
    # requests: every cycle and every request answered as tus prescribes, at a cost
    assert SMOKE.requests_clients == (4,)
    for metric in ("requests.c4.uploads", "requests.c4.cpu", "requests.head.rps"):
        assert rows[("ours", metric)]["median"] > 0, rows[("ours", metric)]
    assert rows[("ours", "requests.c4.errors")]["median"] == 0, rows[("ours", "requests.c4.errors")]
    for extra in rows[("ours", "requests.c4.uploads")]["extras"]:
        assert extra["kind_clients"] == 4, extra
        for kind in ("post", "patch", "head", "delete", "get"):
            assert extra[f"{kind}_errors"] == 0, extra
    assert ("asgi-floor", "requests.c4.uploads") not in rows  # tus servers only
    assert "| upload_service | 4 |" in table, table  # the scenario's own table


def test_bench_smoke_writes_numbers_for_our_server(tmp_path: Path) -> None:
    _require_curl()
    table, document = _run_bench(
        tmp_path, "--only", ",".join(BULK), "--servers", "ours,asgi-floor,socket-floor"
    )
    assert "| upload_service |" in table, table
    assert document["machine"]["nproc"] >= 1
    assert document["servers"]["ours"]["available"] is True

    rows = {(row["server"], row["metric"]): row for row in document["results"]}
    _our_numbers(rows, _of(BULK))
    for metric in ("single", "chunked", "concurrent"):
        for server in ("ours", "asgi-floor", "socket-floor"):
            assert rows[(server, metric)]["median"] > 0, rows[(server, metric)]
    # the checksum scenario measures the event loop beside both runs (the stall figure)
    for extra in rows[("ours", "checksum.on")]["extras"]:
        assert extra["ratio_on_off"] > 0, extra
        for key in ("probe_max_ms_on", "probe_p99_ms_on", "probe_max_ms_off"):
            assert extra[key] > 0, extra
    assert rows[("ours", "single")]["ratios"]["asgi-floor"] is not None
    # lockwait: two replicas on one data directory, the file locker; not run on the floors
    for extra in rows[("ours", "lockwait.patch")]["extras"]:
        assert extra["locker"].startswith("file"), extra
        assert extra["received_before_kill"] > 0, extra
    assert ("asgi-floor", "lockwait.patch") not in rows


def _reachable_pg() -> str:
    """The admin URL of the PostgreSQL the bench tests use (``BENCH_PG_URL``), once it answers;
    otherwise the test skips (fails under ``CI=true``). Needs curl too, as every smoke run."""
    _require_curl()
    url = os.environ.get("BENCH_PG_URL") or pg.DEFAULT_ADMIN_URL
    try:
        pg.server_version(url)
    except pg.DatabaseError as exc:
        _missing(f"PostgreSQL at {url} is unreachable ({exc}); set BENCH_PG_URL to use another")
    return url


def _leftovers_of(url: str, *scenario_names: str) -> set[str]:
    """The bench's databases on the server that measurements of these scenarios made: each name
    ends with its scenario (``pg.fresh_database``'s hint), so the two PostgreSQL tests, which the
    workers may run at the same time, each look at their own only."""
    return {name for name in pg.leftovers(url) if name.rsplit("_", 1)[-1] in scenario_names}


def test_bench_smoke_on_postgresql(tmp_path: Path) -> None:
    url = _reachable_pg()
    from upload_service.settings import FLAT_NAMES

    if "locker" not in FLAT_NAMES:
        pytest.skip(
            "this upload_service has no UPLOAD_LOCKER setting yet (PostgreSQL support not merged)"
        )
    before = _leftovers_of(url, "single", "lockwait")
    table, document = _run_bench(
        tmp_path, "--only", "single,lockwait", "--servers", "ours,ours-pg", "--pg-url", url
    )
    assert "| upload_service (PostgreSQL) |" in table, table
    assert document["servers"]["ours-pg"]["available"] is True, document["servers"]
    rows = {(row["server"], row["metric"]): row for row in document["results"]}
    for server in ("ours", "ours-pg"):
        for metric in ("single", "cpu.single", "lockwait.patch", "lockwait.head"):
            row = rows[(server, metric)]
            assert row["status"] == "ok", row
            assert row["median"] > 0, row
    assert rows[("ours-pg", "single")]["ratios"]["ours"] is not None
    for extra in rows[("ours-pg", "lockwait.patch")]["extras"]:
        assert extra["locker"] == "postgres", extra
    assert _leftovers_of(url, "single", "lockwait") <= before, "databases of the run left behind"


def test_bench_smoke_rows_on_postgresql(tmp_path: Path) -> None:
    """Scenario 12 on PostgreSQL: the rows go into a template database, built by this run (from
    this checkout's schema) and dropped after; each measurement's database is made from it."""
    url = _reachable_pg()
    before = _leftovers_of(url, "rows")
    template = rows_scenario.template_name(SMOKE.rows)
    pg.drop(url, template)
    try:
        _, document = _run_bench(
            tmp_path, "--only", "rows", "--servers", "ours-pg", "--pg-url", url
        )
        assert pg.exists(url, template), "the rows scenario's template database was not built"
    finally:
        pg.drop(url, template)
    rows = {(row["server"], row["metric"]): row for row in document["results"]}
    for metric in ("rows.head_empty", "rows.head", "rows.head_ratio", "rows.deep_page"):
        row = rows[("ours-pg", metric)]
        assert row["status"] == "ok", row
        assert row["median"] > 0, row
    for extra in rows[("ours-pg", "rows.head")]["extras"]:
        assert extra["rows"] == SMOKE.rows, extra
    assert _leftovers_of(url, "rows") <= before, "databases of the run left behind"


def _processes_in(directory: Path) -> list[str]:
    """Processes whose working directory lies under ``directory`` (the bench starts every server
    in a data directory of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = (entry / "cwd").resolve(strict=True)
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, RuntimeError):
            continue
        if cwd.is_relative_to(directory.resolve()):
            found.append(f"{entry.name}: {command}")
    return found


def test_bench_smoke_on_s3(tmp_path: Path) -> None:
    _require_curl()
    if s3.moto_executable() is None:
        _missing("moto_server is not installed (pip install 'moto[server]')")
    table, document = _run_bench(tmp_path, "--only", "single,s3", "--servers", "ours,ours-s3")
    assert "| upload_service (S3) |" in table, table
    assert "| boto3 (default TransferConfig) |" in table, table
    assert document["servers"]["ours-s3"]["available"] is True, document["servers"]
    rows = {(row["server"], row["metric"]): row for row in document["results"]}
    for metric in ("single", "cpu.single"):
        row = rows[("ours-s3", metric)]
        assert row["status"] == "ok", row
        assert row["median"] > 0, row
    assert rows[("ours-s3", "single")]["ratios"]["ours"] is not None
    for metric in (
        "s3.ours",
        "s3.ready",
        "s3.boto3",
        "s3.ratio",
        "s3.rss",
        "s3.cpu",
        "s3.direct",
        "s3.direct_ready",
        "s3.direct_ratio",
    ):
        row = rows[("ours-s3", metric)]
        assert row["status"] == "ok", row
        assert isinstance(row["median"], float), row
        assert row["median"] > 0, row
        assert ("ours", metric) not in rows, "the S3 comparison runs on the S3 variant only"
    ours, boto3, ratio = (rows[("ours-s3", key)] for key in ("s3.ours", "s3.boto3", "s3.ratio"))
    for mine, theirs, quotient in zip(
        ours["samples"], boto3["samples"], ratio["samples"], strict=True
    ):
        assert quotient == pytest.approx(mine / theirs), (mine, theirs, quotient)
    assert rows[("ours-s3", "s3.rss")]["median"] > 20, "peak RSS in MiB of a Python server"
    for extra in ours["extras"]:
        # both objects checked in the bucket: size and the ETag of the file's 8 MiB parts
        assert extra["etag_checked"] == 1, extra
        assert extra["boto3_etag_checked"] == 1, extra
        assert extra["part_size"] == extra["boto3_part_size"] == 8 * MiB, extra
        assert extra["boto3_threads"] == 10, extra
        # the direct side: every part straight to the bucket, the service sees no file bytes
        assert extra["direct_parts"] >= 1, extra
        assert extra["direct_seconds"] > 0, extra
        assert extra["moto_cpu_s_per_gb"] > 0, extra
        assert extra["boto3_moto_cpu_s_per_gb"] > 0, extra
    assert not _processes_in(tmp_path), "processes of the run left behind"


def test_the_loads_of_the_requests_scenario_can_be_chosen() -> None:
    from bench.cli import parse_args
    from bench.config import build_config

    args = parse_args(["--requests-clients", "50,400,800"])
    config = build_config(
        smoke=False, size_mib=None, reps=None, requests_clients=args.requests_clients
    )
    assert config.requests_clients == (50, 400, 800)
    assert build_config(smoke=False, size_mib=None, reps=None).requests_clients == (50, 200)
    for bad in ("", "50,x", "0,50", "-3"):
        with pytest.raises(SystemExit):
            parse_args(["--requests-clients", bad])
