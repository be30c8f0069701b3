"""Progress on stderr: a rich progress bar per file on a terminal (bytes, rate, time left), a
plain line every few seconds otherwise (logs, CI), or nothing (``--quiet``)."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Meter:
    """One file's progress; ``update`` is called from the threads sending its parts with the
    bytes each part has sent so far (a failed request's unacknowledged bytes are taken back by
    updating the part to the server's offset)."""

    def __init__(self, display: Display, name: str, total: int) -> None:
        self._display = display
        self._lock = threading.Lock()
        self._parts: dict[int, int] = {}
        self.name = name
        self.total = total
        self.handle = display.add(self)

    @property
    def done(self) -> int:
        return sum(self._parts.values())

    def update(self, part: int, value: int) -> None:
        with self._lock:
            self._parts[part] = value
            done = sum(self._parts.values())
        self._display.show(self, done)

    def finish(self) -> None:
        self._display.finish(self)


class Display(Protocol):
    def add(self, meter: Meter) -> int: ...
    def show(self, meter: Meter, done: int) -> None: ...
    def finish(self, meter: Meter) -> None: ...
    def note(self, message: str) -> None: ...
    def __enter__(self) -> Display: ...
    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Bar:
    """rich's progress bars (on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
        )
        self._tasks: dict[int, TaskID] = {}

    def add(self, meter: Meter) -> int:
        task = self._progress.add_task(meter.name, total=meter.total)
        self._tasks[id(meter)] = task
        return id(meter)

    def show(self, meter: Meter, done: int) -> None:
        self._progress.update(self._tasks[meter.handle], completed=done)

    def finish(self, meter: Meter) -> None:
        self._progress.update(self._tasks[meter.handle], completed=meter.total)

    def note(self, message: str) -> None:
        self._progress.console.print(f"upload-service: {message}", markup=False, highlight=False)

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Lines:
    """A line per file every ``interval`` seconds and when it is done (not a terminal)."""

    def __init__(self, stream: TextIO, interval: float = 2.0) -> None:
        self._stream = stream
        self._interval = interval
        self._lock = threading.Lock()
        self._state: dict[int, tuple[float, int, float, int]] = {}  # started, at, last, finished

    def add(self, meter: Meter) -> int:
        now = time.monotonic()
        self._state[id(meter)] = (now, -1, 0.0, 0)
        return id(meter)

    def show(self, meter: Meter, done: int) -> None:
        with self._lock:
            started, first, last, finished = self._state[meter.handle]
            now = time.monotonic()
            if first < 0:  # the first figure: the resumed offset, not counted in the rate
                self._state[meter.handle] = (now, done, now, finished)
                return
            if now - last < self._interval or done >= meter.total:
                return  # the line at the end is finish's
            self._state[meter.handle] = (started, first, now, finished)
            self._line(meter, done, started, first, now)

    def _line(self, meter: Meter, done: int, started: float, first: int, now: float) -> None:
        elapsed = max(now - started, 1e-6)
        rate = max(done - first, 0) / elapsed
        percent = 100.0 * done / meter.total if meter.total else 100.0
        left = f"ETA {_duration((meter.total - done) / rate)}" if rate > 0 else "ETA -:--:--"
        print(
            f"{meter.name}  {percent:5.1f}%  {_size(done)} / {_size(meter.total)}"
            f"  {_size(rate)}/s  {left}",
            file=self._stream,
            flush=True,
        )

    def finish(self, meter: Meter) -> None:
        with self._lock:
            started, first, _last, finished = self._state[meter.handle]
            if finished:
                return
            first = meter.total if first < 0 else first  # nothing was sent: it was all there
            self._state[meter.handle] = (started, first, 0.0, 1)
            self._line(meter, meter.total, started, first, time.monotonic())

    def note(self, message: str) -> None:
        print(f"upload-service: {message}", file=self._stream, flush=True)

    def __enter__(self) -> Lines:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class Quiet(Lines):
    """No progress; notes (retries) still go to stderr."""

    def show(self, meter: Meter, done: int) -> None:
        return None

    def finish(self, meter: Meter) -> None:
        return None


def display(mode: str, stream: TextIO | None = None) -> Display:
    """``mode``: ``auto`` (a bar on a terminal, else lines), ``bar``, ``lines`` or ``none``."""
    out = stream if stream is not None else sys.stderr
    if mode == "none":
        return Quiet(out)
    if mode == "bar" or (mode == "auto" and out.isatty()):
        return Bar(out)
    return Lines(out)
