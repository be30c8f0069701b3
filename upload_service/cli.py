"""``upload-service``: serve, migrate, cleanup, check-config, healthcheck, hash-key, token; upload,
status and download (the tus client, ``upload_service.client``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import FrameType

from upload_service.settings import ConfigError, Settings, load_settings

# Whether this process's logging is the command's to configure: not when ``main`` runs inside a
# program (a test) that configured logging already.
_configure_logging = False


def _settings() -> Settings:
    """The settings, with this process's logging configured from them (once, here)."""
    from upload_service.ops.logs import configure

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"upload-service: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if _configure_logging:
        configure(settings)
    return settings


def _migrate(settings: Settings) -> None:
    from upload_service.db.migrate import upgrade

    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database.url)


def _migrate_if_needed(settings: Settings) -> None:
    """``serve``: migrate unless the database is at the expected revision already. The migration
    runs as ``upload-service migrate`` in a child process, so the serving process never imports
    Alembic (about 10 MiB); on PostgreSQL it holds an advisory lock, so replicas that start
    together migrate once."""
    import subprocess
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from upload_service.db.migrate import at_schema_revision

    exists = True
    if settings.database.is_sqlite:  # reading a missing SQLite file would create it
        database = make_url(settings.database.url).database
        exists = database not in (None, "", ":memory:") and Path(database).exists()
    if exists and at_schema_revision(settings.database.url):
        return
    migrated = subprocess.run([sys.executable, "-m", "upload_service", "migrate"], check=False)
    if migrated.returncode != 0:
        print("upload-service: the database could not be migrated", file=sys.stderr)
        raise SystemExit(2)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 64, not {text!r}")
    return value


def _exit_cleanly(_signal: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import signal

    import uvicorn

    from upload_service.auth.setup import check_open_mode
    from upload_service.ops.logs import log_config

    if args.host:  # the app's factory (in every worker) sees the address it is served on
        os.environ["UPLOAD_HOST"] = args.host
    settings = _settings()
    if args.log_level is not None:
        settings = settings.replace(log_level=args.log_level)
    try:
        check_open_mode(settings)
    except ConfigError as exc:
        print(f"upload-service: {exc}", file=sys.stderr)
        return 2
    _migrate_if_needed(settings)  # a new deployment needs nothing else on first run
    from upload_service.db.stores import check_storage_at

    try:  # checked again at every start-up, but there a failure is uvicorn's traceback
        check_storage_at(settings.database.url, settings.storage.backend)
    except ConfigError as exc:
        print(f"upload-service: {exc}", file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else settings.server.workers
    if workers > 1 and settings.observability.metrics:
        _prepare_multiprocess_metrics(settings)
    # uvicorn raises the signal it shut down for again when it is done (the default action kills
    # the process): a drained, finished shutdown exits 0.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit_cleanly)
    uvicorn.run(
        "upload_service.app:create_app",
        factory=True,
        host=settings.server.host,
        port=args.port if args.port is not None else settings.server.port,
        loop="uvloop",
        # httptools, draining running uploads as shutdown begins; imported where the app is.
        http="upload_service.ops.serving:DrainingHttpToolsProtocol",
        ws="none",  # no WebSocket route: nothing of it is imported
        lifespan="on",
        # applied again in every worker process; the access lines are the app's own
        log_config=log_config(settings),
        log_level=settings.observability.log_level,
        access_log=False,
        workers=workers,
        # Off: the app's ProxyHeadersMiddleware believes proxies (UPLOAD_TRUSTED_PROXIES) and
        # also reads Forwarded and X-Forwarded-Host/-Port/-Prefix, which uvicorn's ignores.
        proxy_headers=False,
        timeout_graceful_shutdown=settings.server.shutdown_grace,
    )
    return 0


def _prepare_multiprocess_metrics(settings: Settings) -> None:
    """Workers write their metrics to files in a directory of this run's, added up at /metrics.
    The variable is set before any worker imports prometheus_client (they inherit it); values a
    previous run left are wiped, or its counters would be counted again."""
    import os
    import shutil

    from upload_service.ops.metrics import MULTIPROC_ENV

    directory = settings.storage.data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory.resolve())


def cmd_migrate(_args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    settings = _settings()
    try:
        _migrate(settings)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"upload-service: cannot migrate the database: {reason}", file=sys.stderr)
        return 2
    from sqlalchemy.engine import make_url

    # logged, not printed: under ``serve`` this is part of the server's log, in its format
    shown = make_url(settings.database.url).render_as_string(hide_password=True)
    logging.getLogger("upload_service.migrate").info("database at head: %s", shown)
    return 0


def cmd_cleanup(_args: argparse.Namespace) -> int:
    import asyncio

    from upload_service.app import open_services
    from upload_service.tasks import InlineRunner

    settings = _settings()

    async def run() -> int:
        async with open_services(settings, InlineRunner()) as services:
            return await services.handler.lifecycle.expire()

    try:
        count = asyncio.run(run())
    except ConfigError as exc:
        print(f"upload-service: {exc}", file=sys.stderr)
        return 2
    print(f"expired {count} unfinished uploads")
    return 0


def cmd_check_config(_args: argparse.Namespace) -> int:
    print(_settings().model_dump_json(indent=2))
    return 0


def healthcheck_url(settings: Settings, path: str) -> str:
    """Where this host's own service answers ``path``: its bind address, or loopback when it
    binds every address."""
    host = settings.server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}{path}"


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the service answers ``/readyz`` (or ``--path``) with 200, else 1 with the reason
    on stderr: the image's HEALTHCHECK, at whatever port UPLOAD_PORT sets."""
    import urllib.error
    import urllib.request

    url = healthcheck_url(_settings(), args.path)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as answer:
            status: int = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"upload-service: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"upload-service: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"must start with /, not {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 300, not {text!r}")
    return value


def cmd_hash_key(args: argparse.Namespace) -> int:
    from upload_service.auth.apikey import entry, new_key

    owner: str = args.owner
    if not owner or ":" in owner or "," in owner or len(owner) > 255:
        print("upload-service: the owner must be 1-255 characters without : or ,", file=sys.stderr)
        return 2
    given = args.key is not None
    key: str = args.key if given else new_key()
    if given and not key:
        print("upload-service: the key must not be empty", file=sys.stderr)
        return 2
    print(f"UPLOAD_AUTH_API_KEYS entry: {entry(owner, key)}")
    if not given:
        print(f"key (give it to the client; it is not stored anywhere): {key}")
    return 0


def _ttl(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, not {text!r}")
    return int(text)


def cmd_token(args: argparse.Namespace) -> int:
    from upload_service.auth.token import dev_token

    try:
        token = dev_token(_settings(), args.sub, args.ttl)
    except ConfigError as exc:
        print(f"upload-service: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="upload-service",
        description="The upload service (serve, migrate, cleanup, check-config, healthcheck, "
        "hash-key, token) and its tus client (upload, status, download).",
    )
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="bind address (default UPLOAD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default UPLOAD_PORT or 8080)")
    serve.add_argument(
        "--workers",
        type=_positive,
        help="worker processes sharing the data directory (default UPLOAD_WORKERS or 1)",
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error", "critical"),
        help="the least severe level logged (default UPLOAD_LOG_LEVEL or info)",
    )
    serve.set_defaults(run=cmd_serve)
    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(run=cmd_migrate)
    cleanup = commands.add_parser(
        "cleanup", help="expire unfinished uploads past their expiry, once"
    )
    cleanup.set_defaults(run=cmd_cleanup)
    check = commands.add_parser("check-config", help="validate and print the settings")
    check.set_defaults(run=cmd_check_config)
    health = commands.add_parser(
        "healthcheck", help="exit 0 if this host's service is ready (GET /readyz answers 200)"
    )
    health.add_argument("--path", type=_path, default="/readyz", help="default /readyz")
    health.add_argument("--timeout", type=_seconds, default=3.0, help="seconds (default 3)")
    health.set_defaults(run=cmd_healthcheck)
    hash_key = commands.add_parser(
        "hash-key", help="print an UPLOAD_AUTH_API_KEYS entry for a new random API key (or --key)"
    )
    hash_key.add_argument("owner", help="the owner the key's uploads belong to")
    hash_key.add_argument("--key", help="hash this key instead of a new random one")
    hash_key.set_defaults(run=cmd_hash_key)
    token = commands.add_parser(
        "token", help="print a development JWT signed with UPLOAD_AUTH_JWT_SECRET"
    )
    token.add_argument("--sub", required=True, help="the token's subject (its owner)")
    token.add_argument(
        "--ttl", type=_ttl, default=3600, metavar="SECONDS", help="valid for (default 3600)"
    )
    token.set_defaults(run=cmd_token)
    from upload_service.client.commands import add_commands

    add_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    global _configure_logging
    _configure_logging = not logging.getLogger().handlers  # each command reads the settings first
    args = parser().parse_args(argv)
    result: int = args.run(args)
    return result
