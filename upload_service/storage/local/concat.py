"""Concatenation: a final upload's file rebuilt from its parts' files, in the kernel.

Crash story: the final's file is cut to nothing, its whole length reserved (so a full disk fails
before any byte is copied), the parts copied in order, and only then fdatasynced; the parts are
only read. The caller records the final's length only after ``concatenate`` returned, so a kill -9
midway leaves a partial file that is never served as the final: the assembly runs again and,
cutting first, rebuilds it whole.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from upload_service.storage import space
from upload_service.storage.local.files import fdatasync

COPY_CHUNK = 256 * 1024 * 1024
FALLBACK_CHUNK = 1024 * 1024  # read/write pieces where the kernel cannot copy


def concatenate(target: Path, parts: Sequence[Path], reserve: bool) -> int:
    total = 0
    with target.open("r+b", buffering=0) as out:
        out.truncate(0)
        if reserve:  # the whole result's blocks first: a full disk fails before any copy
            space.reserve(out.fileno(), 0, sum(part.stat().st_size for part in parts))
        for part in parts:
            with part.open("rb", buffering=0) as source:
                total += _copy(source.fileno(), out.fileno(), os.fstat(source.fileno()).st_size)
        fdatasync(out.fileno())
    return total


def _copy(source: int, target: int, size: int) -> int:
    """Kernel-side copy (reflink or in-kernel on most filesystems); read/write as a fallback."""
    copied = 0
    try:
        while copied < size:
            count = os.copy_file_range(source, target, min(size - copied, COPY_CHUNK))
            if not count:
                break
            copied += count
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    if copied < size:
        os.lseek(source, copied, os.SEEK_SET)
        while chunk := os.read(source, min(FALLBACK_CHUNK, size - copied)):
            os.write(target, chunk)
            copied += len(chunk)
    if copied != size:
        raise OSError(errno.EIO, "part changed size while being concatenated")
    return copied
