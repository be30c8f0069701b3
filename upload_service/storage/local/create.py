"""Creating an upload's file and setting its space aside.

Crash story: ``create_file`` fsyncs the new file and its directory before it returns, so an
upload row (inserted after it) never points at a file that a crash can lose. A kill -9 before the
row is inserted leaves at most an empty file that no row names, which the sweep for orphans finds
(``recovery.stored_before``); a refusal or a failure removes the file again.

Space: the file of an upload of known length gets its blocks reserved (``space.reserve``, keeping
the size), so it cannot run out of space midway, and is refused (``StorageFull``, nothing left)
when it does not fit with ``min_free`` bytes to spare; ``reserve_file`` does the same for a length
declared later, and releases what a failed reservation allocated.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from upload_service.errors import StorageFull
from upload_service.storage import space
from upload_service.storage.local.files import fsync_dir


def create_file(path: Path, length: int | None, min_free: int) -> None:
    """The new, empty file, durable, with ``length`` bytes reserved; on a refusal or a failure
    nothing is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    free = space.free_bytes(path.parent)
    if free - (length or 0) < min_free:
        needed = f"{length} bytes needed and " if length else ""
        raise StorageFull(
            f"cannot create upload: storage is full ({free} bytes free, "
            f"{needed}{min_free} kept free)"
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        try:
            if length:
                space.reserve(fd, 0, length)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
            fsync_dir(path.parent)
        raise


def reserve_file(path: Path, start: int, end: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            space.reserve(fd, max(start, 0), end)
        except OSError:
            with contextlib.suppress(OSError):
                space.release_unused(fd)  # what a failed reservation may have allocated
            raise
    finally:
        os.close(fd)
