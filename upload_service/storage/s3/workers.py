"""The S3 store's threads: every S3 call and every spool-file operation runs in one of them, off
the event loop. Two pools: ``run``'s, bounded by a limiter of its own so slow part uploads never
starve the rest of the service's threads, and ``submit``'s for part uploads, apart, so an appender
waiting in ``run`` for its parts never holds up their uploads.

Crash story: none of its own; threads hold nothing durable, and what a kill -9 stops in one of
them is a request S3 applied whole or not at all. An ``OSError`` in them comes from the local
spool file, never from S3 (the client translates those): it is ``StorageFull`` when the spool's
disk is full (not the bucket), else ``StorageError``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.to_thread

from upload_service.errors import StorageError, StorageFull

T = TypeVar("T")
Args = TypeVarTuple("Args")


def spool_error(exc: OSError) -> StorageError:
    """A local spool file's failure: ``StorageFull`` when its disk is full."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)  # the spool's disk, not the bucket
    return (StorageFull if full else StorageError)(
        f"cannot spool upload data: {exc.strerror or exc}"
    )


class Workers:
    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._limiter: anyio.CapacityLimiter | None = None
        self._part_threads: ThreadPoolExecutor | None = None

    def submit(self, function: Callable[[Unpack[Args]], None], *args: *Args) -> Future[None]:
        """``function`` in one of the part-upload threads."""
        if self._part_threads is None:
            self._part_threads = ThreadPoolExecutor(self._threads, "s3-parts")
        return self._part_threads.submit(function, *args)

    async def run(self, function: Callable[[Unpack[Args]], T], *args: *Args) -> T:
        """``function`` in one of the worker threads; ``OSError`` (the spool's) as
        ``StorageError``."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._threads)
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)
        except OSError as exc:
            raise spool_error(exc) from exc

    async def aclose(self) -> None:
        threads, self._part_threads = self._part_threads, None
        if threads is not None:  # appenders were closed first: nothing is in flight
            await anyio.to_thread.run_sync(threads.shutdown)
