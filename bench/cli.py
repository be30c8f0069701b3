"""``bench/run``: measure upload_service against the floors and the peers, print one table, write
JSON to ``bench/results/<timestamp>.json``.

For each scenario, for each repetition, every server in turn (the order rotates by repetition) is
started fresh on a free 127.0.0.1 port, measured, stopped by PID, and its data deleted; then the
page cache's dirty data is flushed (``sync``) so one server's writeback does not slow the next.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench import (
    coldstart,
    lockwait,
    peers,
    pg,
    procfs,
    report,
    request_cost,
    rows,
    s3,
    s3upload,
    scenarios,
)
from bench.client import ClientError, Unsupported
from bench.config import S3_MAX_SIZE, MiB, build_config
from bench.scenarios import Context, Measured, Scenario
from bench.servers import Launch, Role, ServerError, ServerSpec, StartError

REPO = Path(__file__).resolve().parent.parent
ORDER = ("ours", "ours-pg", "ours-s3", "tuspyserver", "tus-node", "asgi-floor", "socket-floor")
VARIANTS = ("ours-pg", "ours-s3")  # need a PostgreSQL, moto: not in the default line-up
DEFAULT_SERVERS = tuple(key for key in ORDER if key not in VARIANTS)
# the scenarios that start their servers themselves, from the measurement's Launch
LAUNCHED: dict[str, Callable[[Context, Launch], Measured]] = {
    "lockwait": lockwait.lockwait,
    "s3": s3upload.s3_vs_boto3,
    "start": coldstart.cold_start,
    "rows": rows.rows,
}
# ... and those measured on one server that ``_on_one_server`` starts
ON_ONE_SERVER: dict[str, Scenario] = {**scenarios.SCENARIOS, "requests": request_cost.request_cost}


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "upload-service-bench"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def own_specs(ours_env: dict[str, str] | None = None) -> list[ServerSpec]:
    python = sys.executable
    service = Path(python).with_name("upload-service")
    serve = [str(service)] if service.exists() else [python, "-m", "upload_service"]
    apps = Path(__file__).with_name("apps")
    ours = ServerSpec(
        key="ours",
        label="upload_service",
        role=Role.OURS,
        argv=(
            *serve,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ),
        version=" ".join([_our_version(), *(f"{k}={v}" for k, v in (ours_env or {}).items())]),
        ready_path="/readyz",
        # PYTHONPATH: this checkout's upload_service, whatever checkout the .venv's editable
        # install (which the console script imports through) points at
        env={**(ours_env or {}), "UPLOAD_DATA_DIR": "{data}", "PYTHONPATH": str(REPO)},
        env_drop_prefix="UPLOAD_",
    )
    # the same server on a fresh PostgreSQL database per measurement (UPLOAD_DATABASE_URL)
    ours_pg = dataclasses.replace(
        ours, key="ours-pg", label="upload_service (PostgreSQL)", postgres=True
    )
    # ... and on an S3 store: a moto server and a fresh bucket per measurement (UPLOAD_S3_*,
    # AWS_*); UPLOAD_MAX_SIZE keeps the parts at 8 MiB (S3's 5 TiB would make them 525 MiB)
    s3_defaults = {"UPLOAD_MAX_SIZE": str(S3_MAX_SIZE), "UPLOAD_S3_PREFIX": "uploads/"}
    ours_s3 = dataclasses.replace(
        ours,
        key="ours-s3",
        label="upload_service (S3)",
        env={**s3_defaults, **ours.env, **s3.CLIENT_ENV},
        env_drop_prefix=("UPLOAD_", "AWS_"),
        s3=True,
    )
    return [
        ours,
        ours_pg,
        ours_s3,
        ServerSpec(
            key="asgi-floor",
            label="asgi-floor",
            role=Role.FLOOR,
            argv=(python, str(apps / "asgi_floor.py"), "{port}"),
            version="bare ASGI app, uvicorn + uvloop + httptools",
        ),
        ServerSpec(
            key="socket-floor",
            label="socket-floor",
            role=Role.FLOOR,
            argv=(python, str(apps / "socket_floor.py"), "{port}"),
            version="threaded socket sink, recv_into",
        ),
    ]


def _our_version() -> str:
    from importlib import metadata

    try:
        return f"upload-service {metadata.version('upload-service')}"
    except metadata.PackageNotFoundError:
        return "upload-service (not installed)"


def ensure_source(cache: Path, size: int) -> Path:
    """A file of ``size`` random bytes in the cache directory, made once and reused."""
    path = cache / f"source-{size}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    _say(f"bench: writing {size / MiB:g} MiB of random bytes to {path}")
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        remaining = size
        while remaining > 0:
            piece = min(8 * MiB, remaining)
            out.write(os.urandom(piece))
            remaining -= piece
    partial.replace(path)
    return path


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("UPLOAD_") or name == "UPLOAD_DATA_DIR":
        raise argparse.ArgumentTypeError(
            f"expected UPLOAD_NAME=VALUE (not UPLOAD_DATA_DIR): {text}"
        )
    return name, value


def _client_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"every load needs at least one client: {text}")
    return counts


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, help="single upload size (default 1024; smoke 8)")
    parser.add_argument("--reps", type=int, help="repetitions, median reported (default 3)")
    parser.add_argument(
        "--requests-clients",
        type=_client_counts,
        help="comma-separated loads of the requests scenario, in concurrent clients (default "
        "50,200; 50,200,400,800 finds where shedding starts)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated scenarios: " + ", ".join([*scenarios.NAMES, *scenarios.ALIASES]),
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument(
        "--servers",
        help=f"comma-separated subset of: {', '.join(ORDER)} (default: all but "
        f"{' and '.join(VARIANTS)})",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip installing and running peers")
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        type=_assignment,
        metavar="UPLOAD_X=V",
        help="a setting for our server (repeatable), e.g. UPLOAD_WRITE_BUFFER=8388608",
    )
    parser.add_argument(
        "--pg-url",
        default=pg.DEFAULT_ADMIN_URL,
        help="the PostgreSQL server (and an existing database to connect to) where ours-pg and "
        f"lockwait create their databases (default {pg.DEFAULT_ADMIN_URL})",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="peers, source file, scratch")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        help="before each measurement wait up to this many seconds for other CPU load to drop "
        "below 0.3 cores (default 15; 0 with --smoke)",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.size_mib is not None and args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.smoke else 15.0
    return args


def _selected_scenarios(only: str | None) -> list[str]:
    if not only:
        return list(scenarios.NAMES)
    chosen: list[str] = []
    for name in (part.strip() for part in only.split(",") if part.strip()):
        if name in scenarios.ALIASES:
            chosen += scenarios.ALIASES[name]
        elif name in scenarios.NAMES:
            chosen.append(name)
        else:
            raise SystemExit(f"bench: unknown scenario {name!r}")
    return [name for name in scenarios.NAMES if name in chosen]


def _lineup(args: argparse.Namespace, cache: Path) -> tuple[list[ServerSpec], list[report.Entry]]:
    wanted = list(DEFAULT_SERVERS)
    if args.servers:
        wanted = [part.strip() for part in args.servers.split(",") if part.strip()]
        unknown = set(wanted) - set(ORDER)
        if unknown:
            raise SystemExit(f"bench: unknown servers {sorted(unknown)}; choose from {ORDER}")
    if args.no_peers:
        wanted = [key for key in wanted if key not in ("tuspyserver", "tus-node")]
    specs = {spec.key: spec for spec in own_specs(dict(args.ours_env))}
    entries: dict[str, report.Entry] = {}
    if "ours-pg" in wanted:
        spec = specs.pop("ours-pg")
        try:
            version = pg.server_version(args.pg_url)
        except pg.DatabaseError as exc:
            reason = f"PostgreSQL at {_hide_password(args.pg_url)} unreachable: {exc}"
            _say(f"bench: {spec.label} unavailable: {reason}")
            entries[spec.key] = report.Entry(spec.key, spec.label, spec.role, unavailable=reason)
        else:
            specs[spec.key] = dataclasses.replace(spec, version=f"{spec.version} on {version}")
    if "ours-s3" in wanted:
        spec = specs.pop("ours-s3")
        if s3.moto_executable() is None:
            reason = "moto_server is not installed (pip install 'moto[server]')"
            _say(f"bench: {spec.label} unavailable: {reason}")
            entries[spec.key] = report.Entry(
                spec.key, spec.label, spec.role, unavailable=reason, s3=True
            )
        else:
            version = f"{spec.version} on moto_server ({s3.versions()})"
            specs[spec.key] = dataclasses.replace(spec, version=version)
    log: list[str] = []
    installers = {"tuspyserver": peers.tuspyserver_peer, "tus-node": peers.node_peer}
    for key, install in installers.items():
        if key in wanted:
            peer = install(cache, log)
            for line in log:
                _say(f"bench: {line}")
            log.clear()
            if peer.spec is not None:
                specs[key] = peer.spec
            else:
                _say(f"bench: peer {peer.label} unavailable: {peer.reason}")
                entries[key] = report.Entry(key, peer.label, Role.PEER, unavailable=peer.reason)
    running = [specs[key] for key in ORDER if key in wanted and key in specs]
    lineup = [
        entries[key] if key in entries else report.Entry.of(specs[key])
        for key in ORDER
        if key in wanted
    ]
    return running, lineup


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def wait_for_idle(limit: float, threshold: float = 0.3) -> float:
    """Wait (at most ``limit`` seconds) until the machine's CPU use over one second falls below
    ``threshold`` cores; the last reading."""
    deadline = time.monotonic() + limit
    while True:
        before = procfs.busy_cpu_seconds()
        time.sleep(1.0)
        busy = procfs.busy_cpu_seconds() - before
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def _start_reason(exc: StartError, label: str) -> str:
    """A failed start in one line for the table: the last error its log names (the log's tail is
    in the message), then the first line of the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "no message"
    first = lines[0].removeprefix(f"{label} ").rstrip(":")
    errors = [line for line in lines[1:] if "Error" in line and "startup failed" not in line]
    if not errors:
        return first
    error = re.sub(r"^[\w.]+\.(?=\w+: )", "", errors[-1])  # module path of the exception class
    return f"{error} ({first})"


@contextmanager
def _launch(
    spec: ServerSpec, pg_url: str, hint: str, workdir: Path, log_path: Path
) -> Iterator[Launch]:
    """How to start ``spec`` for this measurement, with what it needs of its own: a fresh
    PostgreSQL database for a ``postgres`` spec, a moto server with a fresh bucket for an ``s3``
    spec; all of it removed after."""
    with ExitStack() as stack:
        env: dict[str, str] = {}
        target = None
        if spec.postgres:
            url = stack.enter_context(pg.fresh_database(pg_url, f"{spec.key} {hint}"))
            env["UPLOAD_DATABASE_URL"] = url
        if spec.s3:
            target = stack.enter_context(s3.fresh_target(workdir, log_path))
            env.update(target.server_env())
        yield Launch(spec, workdir, log_path, env, s3=target)


def _on_one_server(run: Scenario, ctx: Context, launch: Launch) -> Measured:
    server = launch.start()
    try:
        noise = procfs.Noise(server.pid, *launch.helper_pids)
        moto = launch.s3.pid if launch.s3 is not None else None
        moto_before = procfs.cpu_times(moto).total if moto is not None else 0.0
        measured = run(ctx, server)
        server.check_alive()
        measured.extras["foreign_cores"] = round(noise.foreign_cores(), 3)
        if moto is not None:  # the object store's share of the work
            measured.extras["moto_cpu_s"] = procfs.cpu_times(moto).total - moto_before
        return measured
    finally:
        server.stop()
        server.remove_data()


def _measure(
    scenario: str,
    spec: ServerSpec,
    ctx: Context,
    results: report.Results,
    workdir: Path,
    log_path: Path,
    pg_url: str,
) -> str:
    """Start ``spec`` (with its database or its moto server, if it needs one), run ``scenario``
    on it, record, stop it; a one-line summary."""
    try:
        with _launch(spec, pg_url, scenario, workdir, log_path) as launch:
            if scenario in LAUNCHED:
                measured = LAUNCHED[scenario](ctx, launch)
            else:
                measured = _on_one_server(ON_ONE_SERVER[scenario], ctx, launch)
    except StartError as exc:
        results.problem(
            scenario, spec.key, f"start: {_start_reason(exc, spec.label)}", unsupported=False
        )
        return f"failed to start: {exc}"
    except Unsupported as exc:
        results.problem(scenario, spec.key, str(exc), unsupported=True)
        log_path.unlink(missing_ok=True)
        return f"unsupported: {exc}"
    except (ClientError, ServerError, OSError, TimeoutError, pg.DatabaseError, s3.S3Error) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        results.problem(scenario, spec.key, reason, unsupported=False)
        return f"FAILED {reason} (log: {log_path})"
    finally:
        os.sync()
    log_path.unlink(missing_ok=True)  # logs are kept for failed measurements only
    for key, value in measured.values.items():
        results.add(key, spec.key, value, measured.extras)
    for key, reason in measured.unsupported.items():
        results.unsupported(key, spec.key, reason)
    return ", ".join(f"{key} {value:.2f}" for key, value in measured.values.items())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    config = build_config(
        smoke=args.smoke,
        size_mib=args.size_mib,
        reps=args.reps,
        requests_clients=args.requests_clients,
    )
    chosen = _selected_scenarios(args.only)
    cache: Path = (args.cache_dir or default_cache()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    workdir = cache / "work" / stamp
    logdir = cache / "logs" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    logdir.mkdir(parents=True, exist_ok=True)
    machine_info = report.machine(REPO, cache)

    specs, lineup = _lineup(args, cache)
    if "lockwait" in chosen and not any(spec.postgres for spec in specs):
        _say("bench: lockwait measures the file locker only; add ours-pg to --servers for postgres")
    if "s3" in chosen and not any(spec.s3 for spec in specs):
        _say("bench: s3 runs on ours-s3 only; add it to --servers (it is not in the default)")
    source = ensure_source(cache, config.source_bytes)
    single_source = ensure_source(cache, config.single_bytes)
    ctx = Context(
        config=config,
        source=source,
        single_source=single_source,
        cache=cache,
        pg_url=args.pg_url,
    )
    results = report.Results(scenarios.metrics(config), lineup)
    try:
        for scenario in chosen:
            for rep in range(config.reps):
                shift = rep % len(specs) if specs else 0
                for spec in specs[shift:] + specs[:shift]:
                    if not scenarios.applies(scenario, spec.role, s3=spec.s3):
                        continue
                    if args.wait_idle > 0:
                        busy = wait_for_idle(args.wait_idle)
                        if busy >= 0.3:
                            _say(f"bench: machine still busy ({busy:.1f} cores), measuring anyway")
                    log_path = logdir / f"{scenario}-{rep + 1}-{spec.key}.log"
                    summary = _measure(scenario, spec, ctx, results, workdir, log_path, args.pg_url)
                    _say(f"[{scenario} {rep + 1}/{config.reps}] {spec.label}: {summary}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not any(logdir.iterdir()):
            logdir.rmdir()

    table_text = report.table(results, chosen, config)
    print(table_text)
    out = args.results_dir / f"{stamp}.json"
    report.write_json(
        out,
        results=results,
        scenarios=chosen,
        config=config,
        machine_info=machine_info,
        started=started,
        argv=["bench/run", *(sys.argv[1:] if argv is None else argv)],
        table_text=table_text,
    )
    kept = f"; logs of failed measurements in {logdir}" if logdir.exists() else ""
    _say(f"bench: results in {out}{kept}")
    return 0
