"""Reconciliation: make the committed offset and the stored bytes agree, on HEAD when no request
is writing and at start-up for every upload still receiving (see the crash stories in
``receive`` and ``commit``: stored bytes past the committed offset were never committed and are
cut off).

Crash story: reconciliation is safe to stop anywhere and run again. Cutting the bytes past the
committed offset off is idempotent; lowering an offset the storage no longer backs is one
compare-and-set; an upload killed between its last commit and ``complete`` is completed here,
and the verifications and assemblies a stopped process left are resumed after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import anyio

from upload_service.errors import Locked, NotFound, ServiceError, StorageError
from upload_service.lifecycle import RECONCILE_LOCK, Lifecycle
from upload_service.locking.base import Lease, Locker
from upload_service.storage.base import StorageKey, Store, TailDiscarder
from upload_service.tus.commit import Committer
from upload_service.tus.inflight import InFlight
from upload_service.tus.load import UploadLoader
from upload_service.uploads import Upload, UploadState

if TYPE_CHECKING:
    from upload_service.db.base import UploadRepository

logger = logging.getLogger("upload_service.tus")


class Reconciler:
    def __init__(
        self,
        *,
        store: Store,
        repository: UploadRepository,
        locker: Locker,
        clock: Callable[[], datetime],
        lifecycle: Lifecycle,
        loader: UploadLoader,
        in_flight: InFlight,
        committer: Committer,
    ) -> None:
        self._store = store
        self._repo = repository
        self._locker = locker
        self._clock = clock
        self._lifecycle = lifecycle
        self._loader = loader
        self._in_flight = in_flight
        self._committer = committer

    async def reconcile(self, upload: Upload, lease: Lease) -> Upload:
        """Make the committed offset and the stored bytes agree (caller holds the lock).

        Extra stored bytes were never committed: cut them off. Fewer stored bytes than the offset
        (storage lost data it had confirmed): lower the offset to what is there, loudly.
        """
        try:
            size = await self._store.size(upload.storage)
        except NotFound:
            size = await self._recreate(upload.storage, upload.length)
        if size > upload.offset:
            if isinstance(self._store, TailDiscarder):
                await self._store.discard_tail(upload.storage, upload.offset)
        elif size < upload.offset:
            upload = await self._repo.force_offset(
                upload.id,
                expected=upload.offset,
                offset=size,
                now=self._clock(),
                fence=lease.token,
            )
        return upload

    async def _recreate(self, key: StorageKey, length: int | None) -> int:
        """The upload's storage is gone (lost by the medium): start it again, empty, under the
        same key, or give up on the upload when the store cannot."""
        fresh = await self._store.create(key.upload_id, length)
        if fresh != key:
            await self._store.delete(fresh)
            raise StorageError("the upload's storage is gone and cannot be recreated")
        return 0

    async def reconcile_all(self) -> int:
        """Start-up: reconcile every upload still receiving, then resume verifications and
        assemblies a stopped process left. Returns how many uploads were reconciled."""
        reconciled = 0
        try:
            async with self._locker.lock(RECONCILE_LOCK, wait=0, preempt=False):
                reconciled = await self._reconcile_receiving()
        except Locked:
            logger.info("start-up reconciliation skipped: another process or replica runs it")
        await self._lifecycle.resume()  # verifications (completed just now too) and assemblies
        return reconciled

    async def _reconcile_receiving(self) -> int:
        """Every upload still receiving, but finals: a final's bytes are its assembly's, which
        ``Lifecycle.resume`` runs again (a kill may have left its object complete and its row
        receiving; it is neither cut back nor read here), and direct uploads, whose bytes no
        request of ours wrote. One upload that cannot be reconciled
        (its storage unreachable, say) is logged and left for its next request, whose ``append``
        cuts what was not committed: it never keeps the service from starting."""
        reconciled = 0
        for upload in await self._repo.list_by_state(UploadState.RECEIVING):
            if upload.is_final or upload.direct:  # a direct upload's bytes are the client's
                continue
            try:
                async with self._locker.lock(upload.id, wait=0, preempt=False) as lease:
                    current = await self._loader.claimed(upload.id, lease)
                    if current is not None and current.state is UploadState.RECEIVING:
                        current = await self.reconcile(current, lease)
                        reconciled += 1
                        if current.is_complete:
                            # killed between the last commit and ``complete``
                            await self._committer.complete(current)
            except Locked:
                continue  # another worker process is writing it: consistent by construction
            except ServiceError as exc:
                logger.error(
                    "start-up reconciliation of an upload failed, left for its next request: %s",
                    exc.message,
                    extra={"upload_id": upload.id},
                )
        return reconciled

    async def reconcile_if_idle(self, upload: Upload, *, wait: float) -> Upload:
        """HEAD: if no request is writing, make sure the offset is backed by stored bytes.

        A request holding the upload that this process sees still reading its body (its client
        is sending: ``InFlight.settled``) is neither waited for nor disturbed: the committed
        offset is the answer. Any other (a PATCH whose body ended or broke off and is committing
        what arrived, one whose first bytes this process has not read yet, one in another
        process or on another replica, a verification) is waited for, without being asked to
        let go, for up to ``wait`` seconds: a client that lost its connection and asks at once
        where to resume then learns the offset its broken request ends at, instead of an older
        one that its next PATCH would find stale (409).
        """
        began = anyio.current_time()
        if await self._in_flight.settled(upload.id, wait=wait):
            wait = max(0.0, wait - (anyio.current_time() - began))  # one bound for both waits
        else:
            wait = 0  # alive, or still running after the whole wait
        try:
            async with self._locker.lock(upload.id, wait=wait, preempt=False) as lease:
                current = self._loader.live(await self._loader.claimed(upload.id, lease))
                if (
                    current.state is UploadState.RECEIVING
                    and await self._store.size(current.storage) < current.offset
                ):
                    current = await self.reconcile(current, lease)
                return current
        except Locked:
            return upload  # a PATCH is running; its committed offset is durable by construction
