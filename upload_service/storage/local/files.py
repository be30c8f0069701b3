"""What the local store's durability rests on, and its error boundary.

Crash story: ``fdatasync`` makes a file's data and size survive a kill -9 (or a power cut), and
``fsync_dir`` the directory entry of a file just created or removed; nothing else the store
does is durable until one of them returned. ``translated`` turns a missing file into
``NotFound`` and any other ``OSError`` into ``StorageError`` (``StorageFull`` for a full disk or
quota), so no ``OSError`` leaves the store.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from upload_service.errors import NotFound, StorageError, StorageFull


@contextlib.contextmanager
def translated(action: str, missing: str = "upload data is missing") -> Iterator[None]:
    """The store's error boundary: a missing file is NotFound, any other OSError a StorageError."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFound(missing) from exc
    except OSError as exc:
        raise storage_error(exc, action) from exc


def storage_error(exc: OSError, action: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"cannot {action}: storage is full")
    return StorageError(f"cannot {action}: {exc.strerror or exc.__class__.__name__}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fdatasync(fd: int) -> None:
    # fdatasync covers the data and the file size, which is all a reader of the upload needs.
    (getattr(os, "fdatasync", None) or os.fsync)(fd)
