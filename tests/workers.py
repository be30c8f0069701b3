"""What the parallel workers of one test run share (pytest-xdist, ``-n auto``): a directory of
the run, and three ways to use it.

- ``run_lock``: a lock file, shared or exclusive (the e2e tests' turns, see tests/conftest.py).
- ``once_per_run``: a value made by the first worker that asks for it, read back by the others
  (one Docker image build a run, not one per worker).
- ``while_used``: a resource started by the first worker that needs it and stopped by the last
  one that leaves (the Docker engine: a worker that finishes early must not stop it under
  another's test).

Each worker's session temporary directory is ``<run>/popen-gwN`` under xdist, so ``<run>`` is its
parent; in a run without workers, it is the session's own directory. Either way it is new for
each run: nothing made by an earlier run is taken for this one's.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def run_directory(factory: pytest.TempPathFactory) -> Path:
    """The directory that every worker of this run shares."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def run_lock(factory: pytest.TempPathFactory, name: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the run's lock ``name``: shared with other holders, or ``exclusive``."""
    path = run_directory(factory) / f"{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def once_per_run(
    factory: pytest.TempPathFactory, name: str, make: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``make()``'s value (JSON), made by the first worker of the run to ask; the others wait for
    it and read it back. A ``make`` that fails leaves nothing behind: the next one to ask tries
    again (and fails the same way, in its own test)."""
    value_file = run_directory(factory) / f"{name}.json"
    with run_lock(factory, name, exclusive=True):
        if value_file.exists():
            value: dict[str, Any] = json.loads(value_file.read_text())
            return value
        value = make()
        value_file.write_text(json.dumps(value))
        return value


def alive(pid: int) -> bool:
    """``pid`` is running (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextmanager
def while_used(
    factory: pytest.TempPathFactory,
    name: str,
    start: Callable[[], dict[str, Any] | None],
    stop: Callable[[dict[str, Any]], None],
) -> Iterator[None]:
    """Hold the run's resource ``name`` until the context ends.

    The first worker to enter (with no other holder alive) calls ``start()``; its value, if not
    None, says what to ``stop`` later. The last holder to leave calls ``stop(value)``, whoever
    started it. A worker that died without leaving counts as gone (holders are PIDs)."""
    directory = run_directory(factory)
    holders = directory / f"{name}.holders"
    value_file = directory / f"{name}.json"
    holders.mkdir(exist_ok=True)
    me = holders / str(os.getpid())

    def live_holders() -> list[Path]:
        found = []
        for entry in holders.iterdir():
            if entry.name.isdigit() and alive(int(entry.name)):
                found.append(entry)
            else:
                entry.unlink(missing_ok=True)
        return found

    with run_lock(factory, name, exclusive=True):
        if not live_holders():
            if value_file.exists():  # left by holders that died: theirs to stop now
                stop(json.loads(value_file.read_text()))
                value_file.unlink()
            value = start()
            if value is not None:
                value_file.write_text(json.dumps(value))
        me.touch()
    try:
        yield
    finally:
        with run_lock(factory, name, exclusive=True):
            me.unlink(missing_ok=True)
            if not live_holders() and value_file.exists():
                try:
                    stop(json.loads(value_file.read_text()))
                finally:
                    value_file.unlink()
