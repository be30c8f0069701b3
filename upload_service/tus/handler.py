"""The tus protocol handler: request semantics over a Store, a repository and a Locker.

It imports no web framework: routes hand it raw header values (``TusHeaders``) and the request body
as ``AsyncIterator[bytes]``, and render the ``TusResponse`` it returns or the ``ServiceError`` it raises.

PATCH runs in a fixed order: check headers, take the upload's lock, load the upload, reject a wrong
state or offset, and only then read the body, through a size limit.

Crash story of a PATCH (what a kill -9 at each step leaves):
- while bytes are buffered or in the page cache: the database still holds the last committed offset;
  the file may be longer; start-up reconciliation and the next ``append`` cut the excess off.
- after ``Appender.sync`` returned but before the offset commit: the same, the bytes are simply
  received again.
- after the commit: the offset is durable and every byte below it was fsynced before it.
So the reported offset never exceeds the durable bytes and never moves back past what was reported.

Across replicas (a locker that hands out fencing tokens): the holder claims the upload's row with
its token before reading it, every commit is refused once a newer holder has claimed the row, and
once the lock is lost (``Lease.lost``) the store writes nothing more and nothing is committed; the
request answers 409 and the client resumes from the committed offset, on whichever replica.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from upload_service.errors import (
    BadRequest,
    ClientGone,
    Conflict,
    Forbidden,
    Gone,
    Locked,
    NotFound,
    OffsetMismatch,
    ServiceError,
    StorageError,
    TooLarge,
)
from upload_service.lifecycle import RECONCILE_LOCK, Lifecycle, parse_sha256
from upload_service.locking.base import Lease, Locker
from upload_service.storage.base import (
    Appender,
    Concatenator,
    Finisher,
    Hasher,
    StorageKey,
    Store,
    TailDiscarder,
    check_upload_id,
)
from upload_service.tasks import InlineRunner, Runner
from upload_service.tus.checksum import (
    ALGORITHMS,
    Checksum,
    ChecksumMismatch,
    RunningDigests,
    parse_checksum,
)
from upload_service.tus.concat import check_parts
from upload_service.tus.protocol import (
    OFFSET_CONTENT_TYPE,
    TUS_VERSION,
    check_offset_content_type,
    check_version,
    decode_metadata,
    encode_metadata,
    http_date,
    parse_concat,
    parse_uint,
    upload_id_from_url,
)
from upload_service.uploads import Upload, UploadState

if TYPE_CHECKING:
    from upload_service.repository import UploadRepository

logger = logging.getLogger("upload_service.tus")

CORE_EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",  # all or nothing on every store: the digest is checked before anything is synced
)
CONCAT_EXTENSIONS = ("concatenation", "concatenation-unfinished")


def extensions(store: Store) -> tuple[str, ...]:
    """The tus extensions the configured store really supports."""
    return CORE_EXTENSIONS + (CONCAT_EXTENSIONS if isinstance(store, Concatenator) else ())


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    max_size: int | None = None
    expire_after: float = 7 * 24 * 3600
    checkpoint_bytes: int = 64 * 1024 * 1024
    checkpoint_seconds: float = 2.0
    progress_seconds: float = 0.5
    lock_timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class TusHeaders:
    """Raw values of the request headers the protocol reads (None when absent)."""

    tus_resumable: str | None = None
    content_type: str | None = None
    content_length: str | None = None
    upload_length: str | None = None
    upload_defer_length: str | None = None
    upload_offset: str | None = None
    upload_metadata: str | None = None
    upload_checksum: str | None = None
    upload_concat: str | None = None


@dataclass(frozen=True, slots=True)
class TusResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    upload_id: str | None = None


class LeaseLost(Conflict):
    """This request's lock on the upload was lost (the lock service went away, or a newer
    request took the upload over): it stopped writing, and nothing more of it is committed."""

    def __init__(self) -> None:
        super().__init__(
            "this request lost its lock on the upload; fetch the upload's offset and retry"
        )


class TusHandler:
    def __init__(
        self,
        *,
        store: Store,
        repository: UploadRepository,
        locker: Locker,
        config: HandlerConfig,
        clock: Callable[[], datetime] = utcnow,
        runner: Runner | None = None,
    ) -> None:
        self._store = store
        self._repo = repository
        self._locker = locker
        self._config = config
        self._clock = clock
        self._digests = RunningDigests()
        self.lifecycle = Lifecycle(
            store=store,
            repository=repository,
            locker=locker,
            runner=runner or InlineRunner(),
            clock=clock,
            max_size=config.max_size,
            tombstone_seconds=config.expire_after,
        )

    # -- discovery ------------------------------------------------------------------------------

    def options(self) -> TusResponse:
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(extensions(self._store)),
            "Tus-Checksum-Algorithm": ",".join(ALGORITHMS),
        }
        if self._config.max_size is not None:
            headers["Tus-Max-Size"] = str(self._config.max_size)
        return TusResponse(204, headers)

    # -- creation -------------------------------------------------------------------------------

    async def create(self, headers: TusHeaders, body: AsyncIterator[bytes]) -> TusResponse:
        check_version(headers.tus_resumable)
        concat = parse_concat(headers.upload_concat)
        if concat is not None and not isinstance(self._store, Concatenator):
            raise BadRequest("concatenation is not supported by this server's storage")
        metadata = decode_metadata(headers.upload_metadata or "")
        if metadata.get("sha256") is not None:
            parse_sha256(metadata["sha256"] or b"")
        with_data = _media_type(headers.content_type) == OFFSET_CONTENT_TYPE
        if concat is not None and concat.final:
            return await self._create_final(headers, concat.urls, metadata, with_data)
        length = self._creation_length(headers)
        checksum = _checksum(headers) if with_data else None
        content_length = _content_length(headers)
        if with_data and content_length is not None:
            self._check_fits(0, length, content_length)

        now = self._clock()
        upload_id = uuid.uuid4().hex
        complete = length == 0
        upload = Upload(
            id=upload_id,
            length=length,
            offset=0,
            received=0,
            state=UploadState.VERIFYING if complete else UploadState.RECEIVING,
            metadata=metadata,
            created_at=now,
            updated_at=now,
            expires_at=None if complete else self._expiry(now),
            completed_at=now if complete else None,
            concat=None if concat is None else "partial",
        )
        # File first, then row: a crash in between leaves an orphan file, never a row without bytes.
        key = await self._store.create(upload_id)
        upload = replace(upload, storage_ref=key.ref)
        await self._repo.add(upload)
        if complete:
            upload = await self.lifecycle.completed(upload, hashlib.sha256().digest())
        elif with_data:
            async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
                upload = await self._load_held(upload_id, lease)
                try:
                    upload = await self._receive(upload, body, lease, checksum)
                except (TooLarge, ChecksumMismatch):
                    # The client never learns this upload's URL from an error: leave nothing.
                    await self._repo.terminate(upload_id, self._clock())
                    await self._store.delete(key)
                    raise
            if upload.state is UploadState.VERIFYING:
                await self.lifecycle.verify_soon(upload_id)
        return TusResponse(201, self._offset_headers(upload), upload_id=upload_id)

    async def _create_final(
        self,
        headers: TusHeaders,
        urls: tuple[str, ...],
        metadata: dict[str, bytes | None],
        with_data: bool,
    ) -> TusResponse:
        if headers.upload_length is not None or headers.upload_defer_length is not None:
            raise BadRequest("a final upload takes its length from its parts: omit Upload-Length")
        if with_data:
            raise BadRequest("a final upload cannot carry data")
        part_ids = tuple(upload_id_from_url(url) for url in urls)
        length = check_parts(part_ids, await self._repo.get_many(part_ids), self._clock())
        if length is not None:
            self._check_max_size(length)
        now = self._clock()
        final = Upload(
            id=uuid.uuid4().hex,
            length=length,
            offset=0,
            received=0,
            state=UploadState.RECEIVING,
            metadata=metadata,
            created_at=now,
            updated_at=now,
            expires_at=None,
            concat="final",
            parts=part_ids,
        )
        key = await self._store.create(final.id)
        final = replace(final, storage_ref=key.ref)
        try:
            await self._repo.add_final(final)
        except Conflict as exc:
            await self._store.delete(key)
            raise BadRequest(exc.message) from exc
        await self.lifecycle.assemble_soon(final.id)
        return TusResponse(201, {"Tus-Resumable": TUS_VERSION}, upload_id=final.id)

    def _creation_length(self, headers: TusHeaders) -> int | None:
        if headers.upload_length is not None and headers.upload_defer_length is not None:
            raise BadRequest("send either Upload-Length or Upload-Defer-Length, not both")
        if headers.upload_defer_length is not None:
            if headers.upload_defer_length.strip() != "1":
                raise BadRequest("Upload-Defer-Length must be 1")
            return None
        if headers.upload_length is None:
            raise BadRequest("Upload-Length or Upload-Defer-Length: 1 is required")
        length = parse_uint("Upload-Length", headers.upload_length)
        self._check_max_size(length)
        return length

    def _check_max_size(self, length: int) -> None:
        if self._config.max_size is not None and length > self._config.max_size:
            raise TooLarge(
                f"Upload-Length {length} exceeds the maximum size {self._config.max_size}"
            )

    # -- status ---------------------------------------------------------------------------------

    async def head(self, upload_id: str, headers: TusHeaders) -> TusResponse:
        check_version(headers.tus_resumable)
        upload = await self._load(upload_id)
        if upload.state is UploadState.RECEIVING:
            upload = await self._reconcile_if_idle(upload)
        response = self._offset_headers(upload)
        response["Cache-Control"] = "no-store"
        if upload.is_final:
            response["Upload-Concat"] = "final;" + " ".join(
                f"/files/{part}" for part in upload.parts
            )
            if upload.state is UploadState.RECEIVING:
                del response["Upload-Offset"]  # not assembled yet: there is no offset to resume
        elif upload.is_partial:
            response["Upload-Concat"] = "partial"
        if upload.length is None:
            response["Upload-Defer-Length"] = "1"
        else:
            response["Upload-Length"] = str(upload.length)
        if upload.metadata:
            response["Upload-Metadata"] = encode_metadata(upload.metadata)
        return TusResponse(200, response, upload_id=upload_id)

    async def get(self, upload_id: str) -> Upload:
        """The upload as the JSON API shows it (any state except unknown)."""
        upload = await self._repo.get(check_upload_id(upload_id))
        if upload is None:
            raise NotFound("no such upload")
        return upload

    # -- appending ------------------------------------------------------------------------------

    async def patch(
        self, upload_id: str, headers: TusHeaders, body: AsyncIterator[bytes]
    ) -> TusResponse:
        check_version(headers.tus_resumable)
        check_offset_content_type(headers.content_type)
        if headers.upload_offset is None:
            raise BadRequest("Upload-Offset is required")
        offset = parse_uint("Upload-Offset", headers.upload_offset)
        new_length = (
            None
            if headers.upload_length is None
            else parse_uint("Upload-Length", headers.upload_length)
        )
        content_length = _content_length(headers)
        checksum = _checksum(headers)
        check_upload_id(upload_id)

        async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
            upload = await self._load_held(upload_id, lease)
            if upload.is_final:
                raise Forbidden("a final upload is assembled from its parts and takes no PATCH")
            if offset != upload.offset:
                raise OffsetMismatch(
                    f"Upload-Offset {offset} does not match the upload's offset {upload.offset}"
                )
            # Every check passes before the length is declared: a rejected PATCH changes nothing.
            length = upload.length
            if new_length is not None:
                self._check_declared_length(upload, new_length)
                length = new_length
            if content_length is not None:
                self._check_fits(upload.offset, length, content_length)
            if new_length is not None:
                upload = await self._declare_length(upload, new_length)
            receiving = upload.state is UploadState.RECEIVING
            if receiving:
                upload = await self._receive(upload, body, lease, checksum)
            elif await _has_data(body):  # a chunked body sent to a complete upload
                raise TooLarge("the upload is already complete")
        if (receiving or new_length is not None) and upload.state is UploadState.VERIFYING:
            await self.lifecycle.verify_soon(upload_id)  # the bytes are read back, lock let go
        return TusResponse(204, self._offset_headers(upload), upload_id=upload_id)

    def _check_declared_length(self, upload: Upload, length: int) -> None:
        if upload.length is not None:
            if length != upload.length:
                raise BadRequest(
                    f"Upload-Length {length} differs from the upload's length {upload.length}"
                )
            return
        self._check_max_size(length)
        if length < upload.offset:
            raise BadRequest(f"Upload-Length {length} is less than the offset {upload.offset}")

    async def _declare_length(self, upload: Upload, length: int) -> Upload:
        """Fix a deferred length (the caller has run ``_check_declared_length``)."""
        if upload.length is not None:
            return upload
        upload = await self._repo.declare_length(upload.id, length, self._clock())
        if length == upload.offset:
            digest = self._digests.take(upload.id, upload.offset)
            upload = await self._complete(upload)
            upload = await self.lifecycle.completed(
                upload, None if digest is None else digest.digest()
            )
        return upload

    def _check_fits(self, offset: int, length: int | None, content_length: int) -> None:
        limit = self._limit(offset, length)
        if limit is not None and content_length > limit:
            raise TooLarge(
                f"Content-Length {content_length} exceeds the {limit} bytes the upload has left"
            )

    def _limit(self, offset: int, length: int | None) -> int | None:
        if length is not None:
            return length - offset
        if self._config.max_size is not None:
            return self._config.max_size - offset
        return None

    async def _receive(
        self,
        upload: Upload,
        body: AsyncIterator[bytes],
        lease: Lease,
        checksum: Checksum | None = None,
    ) -> Upload:
        """Stream the body into the store, checkpointing durably; return the committed upload.

        Without a checksum, ends early keeping what was made durable when the client disconnects
        or another request asks for the upload. With one, the request is all or nothing: nothing
        is committed before the digest matches, and a mismatch (460), a disconnect or any error
        cuts the stored bytes back to where the request started. Raises ``TooLarge`` when the
        body runs past the upload's length and ``StorageError`` when the store fails.
        """
        config = self._config
        start = upload.offset
        limit = self._limit(start, upload.length)
        request_digest = None if checksum is None else checksum.hasher()
        whole = self._digests.take(upload.id, start)
        hashers = [hasher for hasher in (request_digest, whole) if hasher is not None]
        appender = await self._store.append(upload.storage, start, hashers, fence=lease)
        overflow: ServiceError | None = None
        failure: StorageError | None = None
        complete_body = False
        received = 0
        last_checkpoint = last_progress = time.monotonic()
        try:
            with anyio.CancelScope() as reading:
                lease.on_release_request(reading.cancel)
                async for chunk in body:
                    if limit is not None and received + len(chunk) > limit:
                        chunk = chunk[: limit - received]
                        overflow = TooLarge(f"request body exceeds the {limit} bytes left")
                    with anyio.CancelScope(shield=True):
                        await appender.write(chunk)
                    received += len(chunk)
                    if overflow is not None:
                        break
                    now = time.monotonic()
                    if checksum is None and (
                        appender.offset - upload.offset >= config.checkpoint_bytes
                        or now - last_checkpoint >= config.checkpoint_seconds
                    ):
                        with anyio.CancelScope(shield=True):
                            upload = await self._checkpoint(upload, appender, lease)
                        last_checkpoint = last_progress = time.monotonic()
                    elif now - last_progress >= config.progress_seconds:
                        with anyio.CancelScope(shield=True):
                            await self._repo.set_received(upload.id, appender.offset)
                        last_progress = now
                else:
                    complete_body = True
            if reading.cancelled_caught:
                complete_body = False
        except ClientGone:
            pass  # keep what arrived (unless checksummed): made durable and committed below
        except StorageError as exc:
            failure = exc
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    if checksum is None:
                        try:
                            upload = await self._checkpoint(upload, appender, lease)
                        except StorageError as exc:
                            failure = failure or exc
                            # the written prefix
                            upload = await self._checkpoint(upload, appender, lease)
                    elif complete_body and failure is None and overflow is None:
                        upload, overflow = await self._commit_checked(
                            upload, appender, lease, checksum, request_digest
                        )
                finally:
                    await appender.aclose()
                if upload.offset != appender.offset or failure is not None:
                    whole = None  # the running digest saw bytes that are not committed
                if checksum is not None and upload.offset == start and appender.offset != start:
                    await self._discard(upload)
        if whole is not None and upload.state is UploadState.RECEIVING:
            self._digests.put(upload.id, upload.offset, whole)
        if upload.state is UploadState.VERIFYING:  # this request wrote the last byte
            upload = await self.lifecycle.completed(
                upload, None if whole is None else whole.digest()
            )
        if failure is not None:
            raise failure
        if overflow is not None:
            raise overflow
        return upload

    async def _commit_checked(
        self,
        upload: Upload,
        appender: Appender,
        lease: Lease,
        checksum: Checksum,
        request_digest: Hasher | None,
    ) -> tuple[Upload, ServiceError | None]:
        """All or nothing: the digest is compared before anything is made durable, and only a
        request made durable whole is committed."""
        assert request_digest is not None
        await appender.settle()
        if request_digest.digest() != checksum.digest:
            return upload, ChecksumMismatch(
                f"{checksum.algorithm} of the request body does not match "
                "Upload-Checksum; the chunk was discarded"
            )
        durable = await appender.sync()
        if durable != appender.offset:
            return upload, StorageError(
                "storage could not make the whole checksummed request durable; resend it"
            )
        if durable != upload.offset:
            upload = await self._commit(upload, durable, lease)
        return upload, None

    async def _discard(self, upload: Upload) -> None:
        """Cut a rejected checksummed request's bytes off; the offset never moved. (A store that
        cannot cut bytes back never made them part of the upload: ``append`` opens at the
        committed offset.)"""
        if isinstance(self._store, TailDiscarder):
            await self._store.discard_tail(upload.storage, upload.offset)
        await self._repo.set_received(upload.id, upload.offset)

    async def _checkpoint(self, upload: Upload, appender: Appender, lease: Lease) -> Upload:
        if lease.lost:
            raise LeaseLost()  # before the sync: a lost holder flushes nothing more
        durable = await appender.sync()
        if durable == upload.offset:
            return upload
        return await self._commit(upload, durable, lease)

    async def _commit(self, upload: Upload, offset: int, lease: Lease) -> Upload:
        """Advance the offset to durable ``offset``; the last byte also completes the upload
        (a crash between the two leaves it complete but receiving: start-up completes it).

        Fenced: nothing is committed once the lease is lost, and the database refuses a commit
        whose fencing token a newer holder has replaced (the row check is in the same statement).
        """
        if lease.lost:
            raise LeaseLost()
        now = self._clock()
        try:
            upload = await self._repo.advance(
                upload.id,
                expected=upload.offset,
                offset=offset,
                now=now,
                expires_at=self._expiry(now),
                fence=lease.token,
            )
        except Conflict:
            if lease.token is not None:
                current = await self._repo.get(upload.id)
                if current is not None and current.fence != lease.token:
                    raise LeaseLost() from None
            raise
        if upload.is_complete:
            upload = await self._complete(upload)
        return upload

    async def _complete(self, upload: Upload) -> Upload:
        """Every byte is committed: let the store finish the object, then leave ``receiving``."""
        if isinstance(self._store, Finisher):
            assert upload.length is not None
            await self._store.finish(upload.storage, upload.length)
        return await self._repo.complete(upload.id, self._clock())

    # -- termination ----------------------------------------------------------------------------

    async def delete(self, upload_id: str, headers: TusHeaders) -> TusResponse:
        check_version(headers.tus_resumable)
        check_upload_id(upload_id)
        async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
            upload = await self._load_held(upload_id, lease, allow_expired=True)
            if upload.final_id is not None:
                final = await self._repo.get(upload.final_id)
                if final is not None and final.state is UploadState.RECEIVING:
                    raise Conflict(
                        f"partial upload belongs to final upload {final.id}, not assembled yet"
                    )
            self._digests.drop(upload_id)
            # Row first: once it says terminated nothing reads the bytes, so a crash before the
            # delete leaves only an orphan file for clean-up.
            await self._repo.terminate(upload_id, self._clock())
            if upload.is_final and upload.state is UploadState.RECEIVING:
                await self._repo.release_parts(upload_id)  # they may join another final
            await self._store.delete(upload.storage)
        return TusResponse(204, {"Tus-Resumable": TUS_VERSION})

    # -- download -------------------------------------------------------------------------------

    async def downloadable(self, upload_id: str) -> Upload:
        upload = await self._load(upload_id)
        if upload.state is UploadState.VERIFYING:
            raise ServiceError(
                "upload is complete and being verified; retry shortly",
                status=409,
                code="verifying",
            )
        if upload.state is not UploadState.READY:
            raise ServiceError(
                f"upload is not finished ({upload.offset} of {upload.length} bytes)",
                status=409,
                code="not_finished",
            )
        return upload

    def read(self, upload: Upload, start: int, end: int) -> AsyncIterator[bytes]:
        return self._store.read(upload.storage, start, end)

    # -- reconciliation -------------------------------------------------------------------------

    async def reconcile(self, upload: Upload, lease: Lease) -> Upload:
        """Make the committed offset and the stored bytes agree (caller holds the lock).

        Extra stored bytes were never committed: cut them off. Fewer stored bytes than the offset
        (storage lost data it had confirmed): lower the offset to what is there, loudly.
        """
        try:
            size = await self._store.size(upload.storage)
        except NotFound:
            size = await self._recreate(upload.storage)
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

    async def _recreate(self, key: StorageKey) -> int:
        """The upload's storage is gone (lost by the medium): start it again, empty, under the
        same key, or give up on the upload when the store cannot."""
        fresh = await self._store.create(key.upload_id)
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
        await self.lifecycle.resume()  # verifications (completed just now too) and assemblies
        return reconciled

    async def _reconcile_receiving(self) -> int:
        reconciled = 0
        for upload in await self._repo.list_by_state(UploadState.RECEIVING):
            try:
                async with self._locker.lock(upload.id, wait=0, preempt=False) as lease:
                    current = await self._claimed(upload.id, lease)
                    if current is not None and current.state is UploadState.RECEIVING:
                        current = await self.reconcile(current, lease)
                        reconciled += 1
                        if current.is_complete and not current.is_final:
                            # killed between the last commit and ``complete``
                            await self._complete(current)
            except Locked:
                continue  # another worker process is writing it: consistent by construction
        return reconciled

    async def _reconcile_if_idle(self, upload: Upload) -> Upload:
        """HEAD: if no request is writing, make sure the offset is backed by stored bytes."""
        try:
            async with self._locker.lock(upload.id, wait=0, preempt=False) as lease:
                current = await self._load_held(upload.id, lease)
                if (
                    current.state is UploadState.RECEIVING
                    and await self._store.size(current.storage) < current.offset
                ):
                    current = await self.reconcile(current, lease)
                return current
        except Locked:
            return upload  # a PATCH is running; its committed offset is durable by construction

    # -- helpers --------------------------------------------------------------------------------

    async def _claimed(self, upload_id: str, lease: Lease) -> Upload | None:
        """The upload, read under its lock; a holder with a fencing token claims it first, so
        commits of any older holder are refused from now on."""
        if lease.token is None:
            return await self._repo.get(upload_id)
        try:
            return await self._repo.claim(upload_id, lease.token)
        except Conflict:
            raise LeaseLost() from None

    async def _load_held(
        self, upload_id: str, lease: Lease, *, allow_expired: bool = False
    ) -> Upload:
        """``_load`` under the upload's lock, claiming it (see ``_claimed``)."""
        return self._live(
            await self._claimed(check_upload_id(upload_id), lease), allow_expired=allow_expired
        )

    async def _load(self, upload_id: str, *, allow_expired: bool = False) -> Upload:
        upload = await self._repo.get(check_upload_id(upload_id))
        return self._live(upload, allow_expired=allow_expired)

    def _live(self, upload: Upload | None, *, allow_expired: bool = False) -> Upload:
        if upload is None:
            raise NotFound("no such upload")
        if upload.state is UploadState.TERMINATED:
            raise Gone("upload was terminated")
        if upload.state is UploadState.EXPIRED or (
            not allow_expired and upload.expired(self._clock())
        ):
            raise Gone("upload has expired")
        if upload.state is UploadState.FAILED:
            raise Gone(f"upload failed: {upload.failure or 'unknown reason'}")
        return upload

    def _expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self._config.expire_after)

    def _offset_headers(self, upload: Upload) -> dict[str, str]:
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(upload.offset)}
        if upload.expires_at is not None and upload.state is UploadState.RECEIVING:
            headers["Upload-Expires"] = http_date(upload.expires_at)
        return headers


def _checksum(headers: TusHeaders) -> Checksum | None:
    if headers.upload_checksum is None:
        return None
    return parse_checksum(headers.upload_checksum)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


async def _has_data(body: AsyncIterator[bytes]) -> bool:
    async for chunk in body:
        if chunk:
            return True
    return False


def _content_length(headers: TusHeaders) -> int | None:
    if headers.content_length is None:
        return None
    return parse_uint("Content-Length", headers.content_length)
