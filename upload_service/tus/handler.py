"""The tus protocol handler: request semantics over a Store, a repository and a Locker.

It imports no web framework: routes hand it raw header values (``TusHeaders``) and the request body
as ``AsyncIterator[bytes]``, and render the ``TusResponse`` it returns or the ``ServiceError`` it raises.

PATCH runs in a fixed order: check headers, take the upload's lock, load the upload, reject a wrong
state or offset, and only then read the body, through a size limit.

The body is received by ``receive.Receiver``, whose docstring tells the crash story of a PATCH and
how fencing keeps replicas apart; ``reconcile.Reconciler`` makes the committed offset and the
stored bytes agree on HEAD and at start-up; ``load.UploadLoader`` loads an upload under its lock.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from upload_service.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OffsetMismatch,
    ServiceError,
    TooLarge,
)
from upload_service.events import NO_EVENTS, Events
from upload_service.lifecycle import Lifecycle, parse_sha256
from upload_service.locking.base import Lease, Locker
from upload_service.storage.base import (
    Concatenator,
    Store,
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
from upload_service.tus.concat import check_parts, first_bytes
from upload_service.tus.content_types import AllowedTypes, ContentRules
from upload_service.tus.endpoint import NO_ENDPOINT, Endpoint
from upload_service.tus.load import UploadLoader
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
)
from upload_service.tus.receive import LeaseLost as LeaseLost  # re-exported: part of this API
from upload_service.tus.receive import Receiver
from upload_service.tus.reconcile import Reconciler
from upload_service.tus.sniff import MagicSniffer, Sniffer
from upload_service.uploads import Upload, UploadState

if TYPE_CHECKING:
    from upload_service.repository import UploadRepository

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
    relative_location: bool = False  # Location on creation: a path instead of an absolute URL
    max_metadata_bytes: int = 4096
    max_metadata_keys: int = 32
    allowed_types: tuple[str, ...] = ()  # parsed patterns (content_types); empty: any type


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
        sniffer: Sniffer | None = None,
        events: Events = NO_EVENTS,
    ) -> None:
        self._store = store
        self._repo = repository
        self._locker = locker
        self._config = config
        self._clock = clock
        self._events = events
        self._digests = RunningDigests()
        self._rules = ContentRules(AllowedTypes(config.allowed_types), sniffer or MagicSniffer())
        self.lifecycle = Lifecycle(
            store=store,
            repository=repository,
            locker=locker,
            runner=runner or InlineRunner(),
            clock=clock,
            max_size=config.max_size,
            tombstone_seconds=config.expire_after,
            events=events,
        )
        self._loader = UploadLoader(repository=repository, clock=clock)
        self._receiver = Receiver(
            store=store,
            repository=repository,
            config=config,
            clock=clock,
            digests=self._digests,
            lifecycle=self.lifecycle,
        )
        self._reconciler = Reconciler(
            store=store,
            repository=repository,
            locker=locker,
            clock=clock,
            lifecycle=self.lifecycle,
            loader=self._loader,
            receiver=self._receiver,
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

    async def create(
        self, headers: TusHeaders, body: AsyncIterator[bytes], endpoint: Endpoint = NO_ENDPOINT
    ) -> TusResponse:
        """A new upload (201 with its ``Location`` under ``endpoint``)."""
        check_version(headers.tus_resumable)
        concat = parse_concat(headers.upload_concat)
        if concat is not None and not isinstance(self._store, Concatenator):
            raise BadRequest("concatenation is not supported by this server's storage")
        metadata = decode_metadata(
            headers.upload_metadata or "",
            max_bytes=self._config.max_metadata_bytes,
            max_keys=self._config.max_metadata_keys,
        )
        if metadata.get("sha256") is not None:
            parse_sha256(metadata["sha256"] or b"")
        self._rules.check_declared(metadata)
        with_data = _media_type(headers.content_type) == OFFSET_CONTENT_TYPE
        if with_data:
            body = self._counted(body)
        if concat is not None and concat.final:
            return await self._create_final(headers, concat.urls, metadata, with_data, endpoint)
        length = self._creation_length(headers)
        checksum = _checksum(headers) if with_data else None
        content_length = _content_length(headers)
        if with_data and content_length is not None:
            self._check_fits(0, length, content_length)
        if with_data and concat is None and self._rules.restricted:
            # the file's first bytes are checked before anything is created
            limit = self._receiver.limit(0, length)
            body = await self._receiver.checked_head(body, self._rules, limit)

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
            expires_at=None if complete else self._receiver.expiry(now),
            completed_at=now if complete else None,
            concat=None if concat is None else "partial",
        )
        # File first, then row: a crash in between leaves an orphan file, never a row without bytes.
        key = await self._store.create(upload_id, upload.length)
        upload = replace(upload, storage_ref=key.ref)
        await self._repo.add(upload)
        self._events.created()
        if complete:
            upload = await self.lifecycle.completed(upload, hashlib.sha256().digest())
        elif with_data:
            async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
                upload = await self._loader.hold(upload, lease)
                try:
                    with self._events.receiving():
                        upload = await self._receiver.receive(upload, body, lease, checksum)
                except (TooLarge, ChecksumMismatch):
                    # The client never learns this upload's URL from an error: leave nothing.
                    await self._repo.terminate(upload_id, self._clock())
                    await self._store.delete(key)
                    raise
            if upload.state is UploadState.VERIFYING:
                await self.lifecycle.verify_soon(upload_id)
        response = self._offset_headers(upload)
        response["Location"] = self._location(endpoint, upload_id)
        return TusResponse(201, response, upload_id=upload_id)

    def _location(self, endpoint: Endpoint, upload_id: str) -> str:
        return endpoint.url(upload_id, relative=self._config.relative_location)

    async def _create_final(
        self,
        headers: TusHeaders,
        urls: tuple[str, ...],
        metadata: dict[str, bytes | None],
        with_data: bool,
        endpoint: Endpoint,
    ) -> TusResponse:
        if headers.upload_length is not None or headers.upload_defer_length is not None:
            raise BadRequest("a final upload takes its length from its parts: omit Upload-Length")
        if with_data:
            raise BadRequest("a final upload cannot carry data")
        part_ids = tuple(endpoint.upload_id(url) for url in urls)
        parts = await self._repo.get_many(part_ids)
        length = check_parts(part_ids, parts, self._clock())
        if length is not None:
            self._check_max_size(length)
        if self._rules.restricted:  # the final's first bytes are its first parts'
            head = await first_bytes(
                self._store, [parts[part_id] for part_id in part_ids], self._rules.head_size
            )
            await self._rules.check_head(head, short=False)
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
        key = await self._store.create(final.id, final.length)
        final = replace(final, storage_ref=key.ref)
        try:
            await self._repo.add_final(final)
        except Conflict as exc:
            await self._store.delete(key)
            raise BadRequest(exc.message) from exc
        self._events.created()
        await self.lifecycle.assemble_soon(final.id)
        created = {"Tus-Resumable": TUS_VERSION, "Location": self._location(endpoint, final.id)}
        return TusResponse(201, created, upload_id=final.id)

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

    async def head(
        self, upload_id: str, headers: TusHeaders, endpoint: Endpoint = NO_ENDPOINT
    ) -> TusResponse:
        check_version(headers.tus_resumable)
        upload = await self._loader.load(upload_id)
        if upload.state is UploadState.RECEIVING:
            upload = await self._reconciler.reconcile_if_idle(upload)
        response = self._offset_headers(upload)
        response["Cache-Control"] = "no-store"
        if upload.is_final:
            response["Upload-Concat"] = "final;" + " ".join(
                endpoint.url(part, relative=True) for part in upload.parts
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
        body = self._counted(body)

        async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
            upload = await self._loader.load_held(upload_id, lease)
            loaded_state = upload.state
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
            if upload.state is UploadState.RECEIVING:
                with self._events.receiving():
                    upload = await self._receiver.receive(
                        upload, body, lease, checksum, rules=self._first_bytes_rules(upload)
                    )
            elif await _has_data(body):  # a chunked body sent to a complete upload
                raise TooLarge("the upload is already complete")
        if loaded_state is UploadState.RECEIVING and upload.state is UploadState.VERIFYING:
            # this request completed it: the bytes are read back now that the lock is let go
            await self.lifecycle.verify_soon(upload_id)
        return TusResponse(204, self._offset_headers(upload), upload_id=upload_id)

    def _first_bytes_rules(self, upload: Upload) -> ContentRules | None:
        """The rules that check this request's first bytes: only with allowed types configured,
        at offset 0 (the file's start), and not for a partial upload, whose bytes may lie in the
        middle of the file (a final upload checks its first part's first bytes instead)."""
        if not self._rules.restricted or upload.offset != 0 or upload.is_partial:
            return None
        return self._rules

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
            upload = await self._receiver.complete(upload)
            upload = await self.lifecycle.completed(
                upload, None if digest is None else digest.digest()
            )
        return upload

    def _check_fits(self, offset: int, length: int | None, content_length: int) -> None:
        limit = self._receiver.limit(offset, length)
        if limit is not None and content_length > limit:
            raise TooLarge(
                f"Content-Length {content_length} exceeds the {limit} bytes the upload has left"
            )

    # -- termination ----------------------------------------------------------------------------

    async def delete(self, upload_id: str, headers: TusHeaders) -> TusResponse:
        check_version(headers.tus_resumable)
        check_upload_id(upload_id)
        async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
            upload = await self._loader.load_held(upload_id, lease, allow_expired=True)
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
        self._events.terminated()
        return TusResponse(204, {"Tus-Resumable": TUS_VERSION})

    # -- download -------------------------------------------------------------------------------

    async def downloadable(self, upload_id: str) -> Upload:
        upload = await self._loader.load(upload_id)
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

    @property
    def draining(self) -> bool:
        return self._receiver.draining

    def drain(self) -> int:
        """Shutdown: ask every running PATCH (and creation with data), and every later one, to
        let go as a preempting request would: each makes its bytes durable, commits and answers
        with its offset. Returns how many were running."""
        return self._receiver.drain()

    # -- reconciliation -------------------------------------------------------------------------

    async def reconcile(self, upload: Upload, lease: Lease) -> Upload:
        """Make the committed offset and the stored bytes agree (caller holds the lock)."""
        return await self._reconciler.reconcile(upload, lease)

    async def reconcile_all(self) -> int:
        """Start-up: reconcile every upload still receiving, then resume verifications and
        assemblies a stopped process left. Returns how many uploads were reconciled."""
        return await self._reconciler.reconcile_all()

    # -- helpers --------------------------------------------------------------------------------

    def _counted(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return _CountedBody(body, self._events)

    def _offset_headers(self, upload: Upload) -> dict[str, str]:
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(upload.offset)}
        if upload.expires_at is not None and upload.state is UploadState.RECEIVING:
            headers["Upload-Expires"] = http_date(upload.expires_at)
        return headers


class _CountedBody:
    """Reports every chunk of a request body as it is read (not an async generator: one left
    unfinished when a request ends early would be finalised later, outside the request)."""

    def __init__(self, body: AsyncIterator[bytes], events: Events) -> None:
        self._body = body
        self._events = events

    def __aiter__(self) -> _CountedBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._body.__anext__()
        self._events.received(len(chunk))
        return chunk


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
