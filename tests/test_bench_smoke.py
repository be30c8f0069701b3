"""The benchmark suite (``bench/run``) runs end to end in ``--smoke`` mode, so it cannot rot.

Tiny sizes, one repetition, our server and the two floors only (peers need npm and PyPI and are
skipped with ``--no-peers``). No timing assertion: only that the run printed its table and wrote
JSON with a number for every metric of our server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
)


def _require_curl() -> None:
    if shutil.which("curl") is not None:
        return
    reason = "'curl' is not installed (the suite's single-PATCH scenario uses it)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason}; CI=true, so a missing component is a failure")
    pytest.skip(reason)


def test_bench_smoke_writes_numbers_for_our_server(tmp_path: Path) -> None:
    _require_curl()
    results = tmp_path / "results"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("UPLOAD_")}
    done = subprocess.run(
        [
            "bash",
            str(REPO / "bench" / "run"),
            "--smoke",
            "--no-peers",
            "--servers",
            "ours,asgi-floor,socket-floor",
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
    assert "| upload_service |" in done.stdout, done.stdout

    written = sorted(results.glob("*.json"))
    assert len(written) == 1, written
    document = json.loads(written[0].read_text())
    assert document["machine"]["nproc"] >= 1
    assert document["servers"]["ours"]["available"] is True

    rows = {(row["server"], row["metric"]): row for row in document["results"]}
    for metric in OUR_METRICS:
        row = rows[("ours", metric)]
        assert row["status"] == "ok", row
        assert isinstance(row["median"], float), row
        assert row["median"] >= 0, row
    for metric in ("single", "chunked", "concurrent"):
        for server in ("ours", "asgi-floor", "socket-floor"):
            assert rows[(server, metric)]["median"] > 0, rows[(server, metric)]
    # the checksum scenario measures the event loop beside both runs (the stall figure)
    for extra in rows[("ours", "checksum.on")]["extras"]:
        assert extra["ratio_on_off"] > 0, extra
        for key in ("probe_max_ms_on", "probe_p99_ms_on", "probe_max_ms_off"):
            assert extra[key] > 0, extra
    assert rows[("ours", "single")]["ratios"]["asgi-floor"] is not None
    assert not (tmp_path / "cache" / "work").exists() or not any(
        (tmp_path / "cache" / "work").iterdir()
    ), "scratch data left behind"
