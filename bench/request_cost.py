"""Scenario 13, ``requests``: what tus requests cost a server, rather than bytes.

On one server process, each load of ``Config.requests_clients`` (50, then 200 clients) repeats the
cycle of a small upload (POST of 1 MiB, four 256 KiB PATCHes, HEAD, DELETE) for
``Config.requests_seconds``; then, with the first load's clients, each kind of request alone for
``Config.requests_kind_seconds``: POST, HEAD, PATCH, DELETE and GET of a small finished upload.
The clients run in a process of their own (``bench/requests_load.py``), which reads the server's
CPU just before and just after the measured time, so neither the bench's threads nor the making of
the uploads a phase needs are counted.

HEAD goes before PATCH and DELETE because its rate bounds theirs: it sizes the pools of uploads
made beforehand for them, so that a client rarely has to create one in the measured time.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from bench.client import ClientError
from bench.requests_load import PIECES, LoadResult
from bench.scenarios import Context, Extra, Measured, request_key
from bench.servers import RunningServer

REPO = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT = 30.0  # seconds for one request; a slower answer is an error
POOL_MARGIN = 2.0  # uploads made beforehand: this many times what the HEAD rate says is needed
POOL_CAP = 100_000  # ... and at most this many in all, for one phase
# the phases of one kind, in the order they run (HEAD's rate sizes the pools of PATCH and DELETE)
PHASES = ("post", "head", "patch", "delete", "get")


def run_load(
    server: RunningServer, kind: str, clients: int, seconds: float, pool: int = 1
) -> LoadResult:
    """One run of ``bench.requests_load`` against ``server``."""
    argv = [
        sys.executable, "-m", "bench.requests_load", "--url", server.base_url,
        "--files-path", server.spec.files_path, "--pid", str(server.pid), "--kind", kind,
        "--clients", str(clients), "--seconds", str(seconds), "--pool", str(pool),
        "--timeout", str(REQUEST_TIMEOUT),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    # making the pools, the measured time, and the requests in flight at its end
    limit = seconds + 4 * REQUEST_TIMEOUT + clients * pool / 20 + 60
    try:
        done = subprocess.run(
            argv,
            cwd=REPO,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"the {kind} load did not end within {limit:.0f} s") from exc
    server.check_alive()
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ClientError(f"the {kind} load exited {done.returncode}: {tail}")
    try:
        return LoadResult.from_json(lines[-1])
    except (ValueError, TypeError) as exc:
        raise ClientError(f"the {kind} load printed {lines[-1][:200]!r}") from exc


def _pool(kind: str, head_rate: float, clients: int, seconds: float) -> int:
    """Uploads to make beforehand, per client, for ``kind``: no request is cheaper than a HEAD."""
    if kind not in ("patch", "delete"):
        return 1
    needed = head_rate * seconds * POOL_MARGIN / clients
    if kind == "patch":
        needed /= PIECES
    return max(1, min(math.ceil(needed) + 1, POOL_CAP // clients))


def request_cost(ctx: Context, server: RunningServer) -> Measured:
    cfg = ctx.config
    values: dict[str, float] = {}
    extras: dict[str, Extra] = {}
    unsupported: dict[str, str] = {}
    for clients in cfg.requests_clients:
        load = run_load(server, "cycle", clients, cfg.requests_seconds)
        group = f"c{clients}"
        values[request_key(group, "uploads")] = load.done / load.seconds
        if load.done:
            values[request_key(group, "cpu")] = load.server_cpu_s * 1000 / load.done
            extras[f"{group}_client_cpu_ms_per_upload"] = load.client_cpu_s * 1000 / load.done
        if load.head_p50_ms is not None and load.head_p99_ms is not None:
            values[request_key(group, "head_p50")] = load.head_p50_ms
            values[request_key(group, "head_p99")] = load.head_p99_ms
        values[request_key(group, "errors")] = float(load.errors)
        values[request_key(group, "shed")] = float(load.shed)
        extras[f"{group}_seconds"] = load.seconds
        extras[f"{group}_requests"] = load.answered
        extras[f"{group}_error_kinds"] = load.error_kinds
    clients, seconds = cfg.requests_clients[0], cfg.requests_kind_seconds
    extras["kind_clients"] = clients
    head_rate = 0.0
    for kind in PHASES:
        pool = _pool(kind, head_rate, clients, seconds)
        load = run_load(server, kind, clients, seconds, pool)
        if load.unsupported:
            for what in ("rps", "cpu"):
                unsupported[request_key(kind, what)] = load.unsupported
            continue
        rate = load.answered / load.seconds
        head_rate = rate if kind == "head" else head_rate
        values[request_key(kind, "rps")] = rate
        if load.answered:
            values[request_key(kind, "cpu")] = load.server_cpu_s * 1000 / load.answered
            extras[f"{kind}_client_cpu_ms"] = load.client_cpu_s * 1000 / load.answered
        extras[f"{kind}_errors"] = load.errors
        extras[f"{kind}_shed"] = load.shed
        extras[f"{kind}_error_kinds"] = load.error_kinds
        extras[f"{kind}_created_in_phase"] = load.created_in_phase
        extras[f"{kind}_pool"] = pool
    return Measured(values, extras, unsupported)
