"""Disk space on the local filesystem: how much is free, and reserving an upload's blocks ahead of
its bytes. Blocking functions, for worker threads only.

A reservation is ``fallocate(FALLOC_FL_KEEP_SIZE)``: the filesystem allocates the blocks of
``[start, end)`` without changing the file's size, so ``st_size`` (the stored bytes, which
reconciliation and reads go by) is untouched, and later writes into the range cannot fail for want
of space. Cutting a file back (``ftruncate``) frees the blocks past its new end, reservation
included, so whoever cuts reserves again. Where the filesystem (or the platform) cannot reserve,
reserving is a no-op, said once in a debug log.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

logger = logging.getLogger("upload_service.storage")

FALLOC_FL_KEEP_SIZE = 1
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's ``fallocate`` (Linux; Python wraps only ``posix_fallocate``, which changes the
    size); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", function)


def reserve(fd: int, start: int, end: int) -> bool:
    """Allocate the blocks of ``[start, end)`` of ``fd`` without changing its size. Returns False
    when the filesystem cannot reserve (nothing happened); raises ``OSError`` (ENOSPC, EDQUOT)
    when the space is not there. Blocks already allocated cost nothing."""
    function = _fallocate()
    if function is None or end <= start:
        return function is not None
    while function(fd, FALLOC_FL_KEEP_SIZE, start, end - start) != 0:
        code = ctypes.get_errno()
        if code == errno.EINTR:
            continue
        if code in _UNSUPPORTED:
            _unsupported(os.fstat(fd).st_dev, code)
            return False
        raise OSError(code, os.strerror(code))
    return True


@functools.cache
def _unsupported(device: int, code: int) -> None:
    logger.debug(
        "filesystem (device %d) cannot reserve space (fallocate: %s): uploads are not reserved",
        device,
        os.strerror(code),
    )


def release_unused(fd: int) -> None:
    """Free whatever was reserved past the file's end (a reservation that failed halfway may have
    allocated part of its range on some filesystems)."""
    os.ftruncate(fd, os.fstat(fd).st_size)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize
