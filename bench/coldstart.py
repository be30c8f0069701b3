"""Scenario 10, ``start``: how long a server takes from its command to its first 200, and what it
holds once idle.

Each repetition starts the server ``starts + 1`` times (5 timed starts in a full run, 1 in a
smoke run) on one data directory: the first start makes the database (our server migrates a new
one) and is not counted; each other start is timed from the process's spawn to the first 200 of
its ready path (our server's ``/readyz``: its database, its storage and free space answer, a
stricter answer than ``/healthz``), polled every 5 ms. One second after that, the process's RSS
is its idle RSS. The values are the medians of the timed starts.
"""

from __future__ import annotations

import http.client
import statistics
import tempfile
import time
from pathlib import Path

from bench import procfs
from bench.config import MiB
from bench.scenarios import Context, Measured
from bench.servers import Launch, RunningServer, ServerError

POLL = 0.005
TIMEOUT = 60.0


def _answers(server: RunningServer) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    try:
        conn.request("GET", server.spec.ready_path)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _one_start(launch: Launch, data_dir: Path) -> tuple[float, float]:
    """(seconds to the first 200, idle RSS in MiB) of one start."""
    started = time.monotonic()
    server = RunningServer(
        launch.spec, launch.workdir, launch.log_path, env=launch.env, data_dir=data_dir
    )
    try:
        while not _answers(server):
            server.check_alive()
            if time.monotonic() - started > TIMEOUT:
                raise ServerError(f"{launch.spec.label} not ready after {TIMEOUT}s")
            time.sleep(POLL)
        seconds = time.monotonic() - started
        time.sleep(1.0)
        server.remember_tree()
        return seconds, procfs.memory(server.pid).rss_total / MiB
    finally:
        server.stop()


def cold_start(ctx: Context, launch: Launch) -> Measured:
    with tempfile.TemporaryDirectory(dir=launch.workdir, prefix=f"start-{launch.spec.key}-") as d:
        data_dir = Path(d)
        _one_start(launch, data_dir)  # makes the database: not counted
        samples = [_one_start(launch, data_dir) for _ in range(ctx.config.starts)]
    seconds = [s for s, _ in samples]
    rss = [r for _, r in samples]
    return Measured(
        {"start.seconds": statistics.median(seconds), "start.rss": statistics.median(rss)},
        {"start_seconds": str([round(s, 3) for s in seconds]), "idle_rss_mib": str(rss)},
    )
