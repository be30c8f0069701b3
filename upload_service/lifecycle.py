"""What happens to an upload after its last byte, and when it expires.

``verifying``: the whole-file sha256 comes from the digest kept while the bytes streamed in (when one
process saw them all, in order) or from reading the stored bytes back in a worker thread. A client
may state the expected digest at creation as the ``sha256`` metadata value (64 hex digits or 44
base64 characters); a mismatch fails the upload with the reason. A final upload (concatenation) is
assembled once every partial upload is ready, by the store (no bytes through Python, each final
its own copy: a part may be a part of several finals), then verified.

Crash story: every transition is a conditional update from the state it expects, so a repeated
step is harmless; start-up (``resume``) re-runs the verification of uploads left ``verifying`` and
the assembly of final uploads whose parts are all ready. A part that expired before the finals
waiting for it were failed (a kill between the two) fails them at start-up the same way.

Parts under an assembly: a final assembles only once every part is ``ready``, and nothing changes
a ready upload's bytes but its deletion, so no part's lock is taken (a final's assembly may run
inline, under the lock of the part whose completion started it: taking that lock again would
wait on itself). Deletion is what must not happen under it: the part's ``terminate`` refuses
while a final still ``receiving`` names it (409), serialised with the final's creation in the
database (``UploadRepository.terminate``), and every path deletes a part's bytes only after its
row has ended. Expiry and the purge cannot reach it either: only ``receiving`` uploads expire (a
part being assembled from is ready), and ``list_ended`` keeps ended parts that a receiving final
names. Once ``assembled`` commits, the final holds its own, durable copy and its parts may go.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
from datetime import datetime, timedelta
from functools import partial

import anyio.to_thread

from upload_service.errors import (
    BadRequest,
    Conflict,
    Locked,
    NotFound,
    QuotaExceeded,
    StorageError,
    Unavailable,
)
from upload_service.events import NO_EVENTS, Events
from upload_service.storage.base import (
    Concatenator,
    Digester,
    Hasher,
    OrphanLister,
    StorageKey,
)
from upload_service.tasks import Runner
from upload_service.tus.types import Backends, HandlerConfig
from upload_service.uploads import ENDED_STATES, Upload, UploadState, smallest
from upload_service.video import VideoProber

logger = logging.getLogger("upload_service.lifecycle")

# Stored bytes without an upload row are swept once they are this old: creating an upload's
# storage and inserting its row take milliseconds, so only a crash between them leaves such bytes.
ORPHAN_BATCH = 500

ASSEMBLY_LOCK_WAIT = 60.0
# Lock keys of work that runs once across every process and replica (never upload ids: those
# are 32 hex digits).
CLEANUP_LOCK = "cleanup"
RECONCILE_LOCK = "reconcile"


def expected_sha256(upload: Upload) -> bytes | None:
    raw = upload.metadata.get("sha256")
    if raw is None:
        return None
    return parse_sha256(raw)


def parse_sha256(raw: bytes) -> bytes:
    text = raw.decode("ascii", errors="replace").strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    elif len(text) == 44:
        try:
            digest = base64.b64decode(text, validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) == 32:
            return digest
    raise BadRequest("metadata sha256 must be 64 hex digits or 44 base64 characters")


class Lifecycle:
    def __init__(
        self,
        *,
        backends: Backends,
        runner: Runner,
        config: HandlerConfig,
        events: Events = NO_EVENTS,
        video: VideoProber | None = None,
    ) -> None:
        self._store = backends.store
        self._repo = backends.repository
        self._locker = backends.locker
        self._runner = runner
        self._clock = backends.clock
        self._max_size = config.max_size
        self._tombstone = timedelta(seconds=config.expire_after)
        self._orphan_grace = timedelta(seconds=config.orphan_grace)
        self._events = events
        self._video = video  # ffprobe's details of a video, found before it becomes ready
        self._quota = config.quota  # a final of parts of unknown length: its length is checked here

    async def completed(self, upload: Upload, digest: bytes | None) -> Upload:
        """The upload's last byte is durable (state ``verifying``); the caller holds its lock.
        With the streamed ``digest`` it is verified on the spot; without one the caller calls
        ``verify_soon`` once it has let go of the lock."""
        if digest is None:
            return upload
        return await self._finish(upload, digest)

    async def verify_soon(self, upload_id: str) -> None:
        await self._runner.spawn(partial(self.verify, upload_id), f"verify {upload_id}")

    async def verify(self, upload_id: str) -> None:
        """Read the stored bytes back for the whole-file digest, under the upload's lock: replicas
        that both resume a verification hash the file once (the second finds it done)."""
        async with self._locker.lock(upload_id, wait=ASSEMBLY_LOCK_WAIT, preempt=False):
            upload = await self._repo.get(upload_id)
            if upload is None or upload.state is not UploadState.VERIFYING:
                return
            try:
                digest = await self._digest(upload, hashlib.sha256())
            except (NotFound, StorageError) as exc:
                if isinstance(exc, Unavailable):
                    raise  # the store is down for now: verified again at the next start
                # the bytes are gone or unreadable: failed with the reason, never a silent ready
                reason = f"the sha256 could not be computed: {exc.message}"
                with contextlib.suppress(Conflict):
                    await self._repo.fail(
                        upload_id, reason, self._clock(), only_from=(UploadState.VERIFYING,)
                    )
                    self._events.failed()
                    logger.warning("upload failed: %s", reason, extra={"upload_id": upload_id})
                return
            await self._finish(upload, digest)

    async def _digest(self, upload: Upload, hasher: Hasher) -> bytes:
        if isinstance(self._store, Digester):
            return await self._store.digest(upload.storage, hasher)
        async for piece in self._store.read(upload.storage, 0, upload.offset):
            await anyio.to_thread.run_sync(hasher.update, piece)  # never hashed on the loop
        return hasher.digest()

    async def _finish(self, upload: Upload, digest: bytes) -> Upload:
        expected = expected_sha256(upload)
        try:
            if expected is not None and expected != digest:
                reason = f"sha256 mismatch: expected {expected.hex()}, got {digest.hex()}"
                result = await self._repo.fail(
                    upload.id, reason, self._clock(), only_from=(UploadState.VERIFYING,)
                )
            else:
                # still verifying while ffprobe looks: ready comes with the video's details
                video = (
                    None if self._video is None else await self._video.details(self._store, upload)
                )
                result = await self._repo.mark_ready(
                    upload.id, digest.hex(), self._clock(), video=video
                )
        except Conflict:
            return upload  # someone else finished (or ended) it meanwhile
        if result.state is UploadState.READY:
            self._events.finished()
            logger.info("upload ready (%d bytes)", result.offset, extra={"upload_id": upload.id})
        elif result.state is UploadState.FAILED:
            self._events.failed()
            logger.warning("upload failed: %s", result.failure, extra={"upload_id": upload.id})
        for final_id in result.finals:  # every final that waits for this part (a no-op for others)
            await self._runner.spawn(partial(self.assemble, final_id), f"assemble {final_id}")
        return result

    async def assemble_soon(self, final_id: str) -> None:
        await self._runner.spawn(partial(self.assemble, final_id), f"assemble {final_id}")

    async def assemble(self, final_id: str) -> None:
        """Concatenate a final upload once all its parts are ready; fail it if one cannot be."""
        async with self._locker.lock(final_id, wait=ASSEMBLY_LOCK_WAIT, preempt=False):
            final = await self._repo.get(final_id)
            if final is None or final.state is not UploadState.RECEIVING:
                return
            parts = await self._repo.get_many(final.parts)
            for part_id in final.parts:
                part = parts.get(part_id)
                if part is None or part.state in ENDED_STATES:
                    state = "gone" if part is None else part.state.value
                    await self._fail(final_id, f"partial upload {part_id} is {state}")
                    return
                if part.state is not UploadState.READY:
                    return  # assembled when the last part becomes ready
            total = sum(parts[part_id].length or 0 for part_id in final.parts)
            # parts of deferred length could not be checked when the final was created
            limit = smallest(self._max_size, final.size_cap)
            if limit is not None and total > limit:
                await self._fail(
                    final_id, f"assembled length {total} exceeds the maximum size {limit}"
                )
                return
            if self._quota is not None and final.owner is not None and final.length is None:
                try:  # before any byte is copied; ``assembled`` checks again, serialised
                    self._quota.check(await self._repo.usage(final.owner), size=total)
                except QuotaExceeded as exc:
                    await self._fail(final_id, exc.message)
                    return
            if not isinstance(self._store, Concatenator):
                await self._fail(final_id, "this server's storage cannot concatenate uploads")
                return
            keys = [parts[part_id].storage for part_id in final.parts]
            length = await self._store.concatenate(final.storage, keys)
            try:
                final = await self._repo.assembled(final_id, length, self._clock(), self._quota)
            except QuotaExceeded as exc:  # another upload of the owner's took the room meanwhile
                await self._fail(final_id, exc.message)
                await self._store.delete(final.storage)  # row first: nothing reads them now
                return
            logger.info(
                "final upload assembled from %d parts (%d bytes)",
                len(keys),
                length,
                extra={"upload_id": final_id},
            )
        await self.verify(final.id)

    async def _purge(self, before: datetime) -> int:
        ended = await self._repo.list_ended(before)
        for upload in ended:
            await self._store.delete(upload.storage)  # bytes first: no file outlives its row
            await self._repo.forget(upload.id)
            logger.debug("ended upload forgotten", extra={"upload_id": upload.id})
        return len(ended)

    async def _fail(self, upload_id: str, reason: str) -> None:
        await self._repo.fail(upload_id, reason, self._clock(), only_from=(UploadState.RECEIVING,))
        self._events.failed()
        logger.warning("upload failed: %s", reason, extra={"upload_id": upload_id})

    async def resume(self) -> None:
        """Start-up: finish what a stopped process left half done."""
        for upload in await self._repo.list_by_state(UploadState.VERIFYING):
            await self.verify_soon(upload.id)
        for final in await self._repo.list_finals_waiting():
            await self._runner.spawn(partial(self.assemble, final.id), f"assemble {final.id}")

    async def expire(self) -> int:
        """Mark unfinished uploads past their expiry ``expired`` and delete their bytes; the row
        stays as a tombstone (requests answer 410) until it is older than the tombstone period,
        then it is deleted with the other ended uploads'. Uploads being written are left alone.
        One pass runs at a time across every process and replica (the others skip theirs)."""
        try:
            async with self._locker.lock(CLEANUP_LOCK, wait=0, preempt=False):
                return await self._expire()
        except Locked:
            logger.info("clean-up skipped: another process or replica is running it")
            return 0

    async def _expire(self) -> int:
        count = 0
        now = self._clock()
        for upload in await self._repo.list_expired(now):
            try:
                async with self._locker.lock(upload.id, wait=0, preempt=False):
                    current = await self._repo.get(upload.id)
                    if current is None or not current.expired(self._clock()):
                        continue
                    expired = await self._repo.expire(upload.id, self._clock())
                    await self._store.delete(current.storage)
                    count += 1
                    logger.info("upload expired, its bytes deleted", extra={"upload_id": upload.id})
            except Locked:
                continue  # being written right now: its expiry moves on with the next commit
            except Conflict:
                continue
            for final_id in expired.finals:  # the finals that waited for it (fails each)
                await self.assemble(final_id)
        self._events.expired(count)
        purged = await self._purge(self._clock() - self._tombstone)
        swept = await self._sweep_orphans(self._clock() - self._orphan_grace)
        if count or purged or swept:
            logger.info(
                "expired %d unfinished uploads, forgot %d ended ones, swept %d orphaned files",
                count,
                purged,
                swept,
            )
        return count

    async def _sweep_orphans(self, before: datetime) -> int:
        """Delete stored bytes that no upload row names and that nobody touched since ``before``
        (a crash between creating an upload's storage and inserting its row leaves them)."""
        if not isinstance(self._store, OrphanLister):
            return 0
        swept = 0
        candidates = await self._store.stored_before(before)
        for start in range(0, len(candidates), ORPHAN_BATCH):
            batch: list[StorageKey] = candidates[start : start + ORPHAN_BATCH]
            known = await self._repo.get_many(tuple(key.upload_id for key in batch))
            for key in batch:
                if key.upload_id in known:
                    continue
                try:
                    async with self._locker.lock(key.upload_id, wait=0, preempt=False):
                        if await self._repo.get(key.upload_id) is None:
                            await self._store.delete(key)
                            swept += 1
                            logger.info(
                                "orphaned stored bytes deleted (no upload row names them)",
                                extra={"upload_id": key.upload_id},
                            )
                except Locked:
                    continue
        return swept
