"""The client's subcommands (``upload``, ``status``, ``download``), added to ``cli.parser``."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from upload_service.client.errors import INTERRUPTED, OK, USAGE, ExitError

if TYPE_CHECKING:
    from upload_service.client.tus import Session

# The client's own modules (httpx, rich) are imported by its commands when they run: ``serve``,
# which builds the same parser, never loads them.

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
CHECKSUMS = ("auto", "sha1", "sha256", "sha512", "md5", "crc32")


def size(text: str) -> int:
    """``64M``, ``1GiB``, ``512k``, ``1048576``: binary units, at least 1 byte."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M, 1G, 1048576)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _metadata(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or re.search(r"[\s,]", key):
        raise argparse.ArgumentTypeError(
            f"metadata must be key=value (no space or comma in the key): {text!r}"
        )
    return key, value


def _parallel(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 16:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 16, not {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}")
    return value


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--token",
        default=None,
        help="bearer token (JWT or API key); default: the UPLOAD_TOKEN environment variable",
    )
    command.add_argument(
        "--retries",
        type=_parallel,
        default=8,
        metavar="N",
        help="failed attempts in a row without progress before giving up (default 8)",
    )
    command.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="progress on stderr: a bar on a terminal, else a line every 2 s (default auto)",
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    upload = commands.add_parser(
        "upload", help="upload files to a tus endpoint (resumes an interrupted upload)"
    )
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    upload.add_argument(
        "--endpoint", required=True, help="the tus endpoint, e.g. http://host/files/"
    )
    upload.add_argument(
        "--chunk-size", type=size, default=size("64M"), help="bytes per PATCH (default 64M)"
    )
    upload.add_argument(
        "--parallel",
        type=_parallel,
        default=1,
        metavar="N",
        help="N partial uploads at once, then their concatenation (if the server offers it)",
    )
    upload.add_argument(
        "--checksum", choices=CHECKSUMS, help="send Upload-Checksum with every PATCH"
    )
    upload.add_argument(
        "--metadata",
        type=_metadata,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Upload-Metadata (repeatable; filename and filetype are set from the file)",
    )
    upload.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait, after the last byte, for the server to assemble and verify the "
        "upload before exiting 1 (default 600)",
    )
    upload.add_argument(
        "--state-file", type=Path, help="the resume store (default under $XDG_STATE_HOME)"
    )
    _common(upload)
    upload.set_defaults(run=cmd_upload)
    status = commands.add_parser("status", help="show an upload's state, offset and sha256")
    status.add_argument("url")
    _common(status)
    status.set_defaults(run=cmd_status)
    download = commands.add_parser("download", help="download an upload (resumes with Range)")
    download.add_argument("url")
    download.add_argument("-o", "--output", type=Path, help="file to write (default: its name)")
    _common(download)
    download.set_defaults(run=cmd_download)


@contextmanager
def _session(args: argparse.Namespace, endpoint: str) -> Iterator[Session]:
    """A session whose ``stop`` SIGTERM and Ctrl+C set (the running transfers end at once and
    the command exits 130; what the server committed stays for the next run)."""
    from upload_service.client.retry import RetryPolicy
    from upload_service.client.tus import Session

    stop = threading.Event()
    token = args.token if args.token is not None else os.environ.get("UPLOAD_TOKEN")
    session = Session(
        endpoint,
        token=token or None,
        policy=RetryPolicy(attempts=args.retries),
        note=lambda message: print(f"upload-service: {message}", file=sys.stderr, flush=True),
        stop=stop,
    )

    def stopping(_signal: int, _frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stopping)
    try:
        yield session
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        session.close()


def _run(body: Callable[[], None], what: str) -> int:
    from upload_service.client.retry import Stopped

    try:
        body()
    except ExitError as exc:
        print(f"upload-service: {exc.message}", file=sys.stderr, flush=True)
        return exc.status
    except (KeyboardInterrupt, Stopped):
        print(f"upload-service: interrupted; {what}", file=sys.stderr, flush=True)
        return INTERRUPTED
    return OK


def cmd_upload(args: argparse.Namespace) -> int:
    from upload_service.client.progress import display
    from upload_service.client.store import ResumeStore
    from upload_service.client.upload import Options, Uploader

    files: list[Path] = args.files
    for path in files:
        if not path.is_file():
            print(f"upload-service: {path}: not a readable file", file=sys.stderr)
            return USAGE
    options = Options(
        chunk_size=args.chunk_size,
        parallel=args.parallel,
        checksum=args.checksum,
        metadata=tuple(args.metadata),
        ready_timeout=args.ready_timeout,
    )

    def body() -> None:
        with _session(args, args.endpoint) as session, display(args.progress) as shown:
            session.note = shown.note
            uploader = Uploader(session, ResumeStore(args.state_file), shown, options)
            for path in files:
                url = uploader.upload(path)
                print(url, flush=True)

    return _run(body, "run the same command again to resume")


def cmd_status(args: argparse.Namespace) -> int:
    from upload_service.client.download import status

    def body() -> None:
        with _session(args, args.url) as session:
            status(session, args.url, sys.stdout)

    return _run(body, "nothing changed")


def cmd_download(args: argparse.Namespace) -> int:
    from upload_service.client.download import download
    from upload_service.client.progress import display

    def body() -> None:
        with _session(args, args.url) as session, display(args.progress) as shown:
            session.note = shown.note
            print(download(session, args.url, args.output, shown), flush=True)

    return _run(body, "run the same command again to resume the download")
