"""What reconciliation and the orphan sweep ask of the local store after a crash.

Crash story: after a kill -9 an upload's file may hold bytes past the committed offset (written,
never synced into an offset); ``truncate_file`` cuts them off and fsyncs the cut, and only ever
cuts (extending would invent zero bytes). A crash between creating a file and inserting its row
leaves a file no row names; ``stored_before`` lists the files last changed before a moment, and
only those named like an upload id, so a temporary or foreign file is never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from upload_service.errors import NotFound
from upload_service.storage.base import StorageKey, check_upload_id


def truncate_file(path: Path, length: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        # Only ever cut: ftruncate past the end would invent zero bytes.
        os.ftruncate(fd, min(length, os.fstat(fd).st_size))
        os.fsync(fd)
    finally:
        os.close(fd)


def stored_before(root: Path, timestamp: float) -> list[StorageKey]:
    found: list[StorageKey] = []
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            if not _is_upload_id(entry.name):
                continue  # not an upload's bytes (a temporary or foreign file): never touched
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < timestamp:
                    found.append(StorageKey(entry.name))
            except FileNotFoundError:
                continue
    return found


def _is_upload_id(name: str) -> bool:
    try:
        check_upload_id(name)
    except NotFound:
        return False
    return True
