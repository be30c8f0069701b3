"""The tus protocol handler: request semantics over a Store, a repository and a Locker.

It imports no web framework: routes hand it one ``TusRequest`` (the caller, the upload id, the raw
header values and the endpoint) and the request body as ``AsyncIterator[bytes]``, and render the
``TusResponse`` it returns or the ``ServiceError`` it raises. ``Tus-Resumable`` is not its
concern: the app adds it to every response under the tus path, errors included.

PATCH runs in a fixed order: check headers, take the upload's lock, load the upload, reject a wrong
state or offset, and only then read the body, through a size limit.

The handler builds its collaborators and keeps PATCH's order and termination; the rest is theirs.
``receive.Receiver`` receives a body, whose docstring tells the crash story of a PATCH and how
fencing keeps replicas apart, over the strategies ``checkpointing`` and ``all_or_nothing`` that
commit through ``commit.Committer``; ``limits.Limits`` decides how much a body may carry;
``reconcile.Reconciler`` makes the committed offset and the stored bytes agree on HEAD and at
start-up; ``load.UploadLoader`` is the one place that loads an upload for a request and checks its
existence, owner and state; ``creation.Creator`` creates; ``whole.WholeFiles`` receives a form's
whole file; ``direct.DirectUploads`` keeps the uploads whose bytes go straight to the store;
``download_gate.DownloadGate`` decides what may be downloaded.

Crash story of what the handler itself changes (what a kill -9 at each step leaves):
- a PATCH declaring a deferred length: the length is one compare-and-set; killed after it but
  before the upload is completed (a length equal to the offset), the upload is complete but
  receiving, and start-up reconciliation completes it.
- a DELETE: the row first, then the bytes. Once the row says terminated nothing reads the bytes,
  so a kill -9 before the delete leaves only an orphan file for the clean-up task.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from upload_service.errors import BadRequest, Forbidden, OffsetMismatch, TooLarge
from upload_service.events import NO_EVENTS, Events
from upload_service.hooks.pre_create import NO_PRE_CREATE, PreCreateHook
from upload_service.lifecycle import Lifecycle
from upload_service.locking.base import Lease, Locker
from upload_service.storage.base import Concatenator, Store, check_upload_id
from upload_service.tasks import InlineRunner, Runner
from upload_service.tus.body import CountedBody
from upload_service.tus.checksum import ALGORITHMS, RunningDigests
from upload_service.tus.commit import Committer
from upload_service.tus.content_types import AllowedTypes, ContentRules
from upload_service.tus.creation import Creator
from upload_service.tus.direct import DirectUploads
from upload_service.tus.download_gate import DownloadGate
from upload_service.tus.inflight import InFlight
from upload_service.tus.limits import Limits
from upload_service.tus.load import UploadLoader
from upload_service.tus.protocol import (
    TUS_VERSION,
    check_offset_content_type,
    check_version,
    offset_headers,
    parse_uint,
    status_headers,
)
from upload_service.tus.receive import Receiver
from upload_service.tus.reconcile import Reconciler
from upload_service.tus.request import TusRequest, request_checksum, request_content_length
from upload_service.tus.sniff import MagicSniffer, Sniffer
from upload_service.tus.types import Backends, HandlerConfig, TusResponse
from upload_service.tus.whole import WholeFiles
from upload_service.uploads import Metadata, Upload, UploadState
from upload_service.video import VideoProber

if TYPE_CHECKING:
    from upload_service.db.base import UploadRepository

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
        pre_create: PreCreateHook = NO_PRE_CREATE,
        video: VideoProber | None = None,
    ) -> None:
        self._store = store
        self._repo = repository
        self._locker = locker
        self._config = config
        self._clock = clock
        self._events = events
        self._digests = RunningDigests()
        self._in_flight = InFlight()  # this process's PATCHes not yet answered, by upload
        self._rules = ContentRules(AllowedTypes(config.allowed_types), sniffer or MagicSniffer())
        backends = Backends(store=store, repository=repository, locker=locker, clock=clock)
        self.lifecycle = Lifecycle(
            backends=backends,
            runner=runner or InlineRunner(),
            config=config,
            events=events,
            video=video,
        )
        self._loader = UploadLoader(repository=repository, clock=clock)
        self._limits = Limits(config=config, repository=repository)
        self._committer = Committer(store=store, repository=repository, config=config, clock=clock)
        self._receiver = Receiver(
            store=store,
            config=config,
            digests=self._digests,
            lifecycle=self.lifecycle,
            committer=self._committer,
            limits=self._limits,
        )
        self._creator = Creator(
            backends=backends,
            config=config,
            events=events,
            rules=self._rules,
            lifecycle=self.lifecycle,
            loader=self._loader,
            receiver=self._receiver,
            limits=self._limits,
            in_flight=self._in_flight,
            pre_create=pre_create,
        )
        self._reconciler = Reconciler(
            store=store,
            repository=repository,
            locker=locker,
            clock=clock,
            lifecycle=self.lifecycle,
            loader=self._loader,
            in_flight=self._in_flight,
            committer=self._committer,
        )
        self._gate = DownloadGate(
            store=store, repository=repository, loader=self._loader, verify_wait=config.verify_wait
        )
        self._whole = WholeFiles(operations=self, limits=self._limits)
        # uploads whose bytes go from the client straight to the store (``direct``)
        self.direct = DirectUploads(
            backends=backends,
            config=config,
            events=events,
            rules=self._rules,
            lifecycle=self.lifecycle,
            loader=self._loader,
            pre_create=pre_create,
        )

    # -- discovery ------------------------------------------------------------------------------

    def options(self) -> TusResponse:
        headers = {
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(extensions(self._store)),
            "Tus-Checksum-Algorithm": ",".join(ALGORITHMS),
        }
        if self._config.max_size is not None:
            headers["Tus-Max-Size"] = str(self._config.max_size)
        return TusResponse(204, headers)

    @property
    def max_size(self) -> int | None:
        """The service's largest upload (None: no cap)."""
        return self._config.max_size

    @property
    def clock(self) -> Callable[[], datetime]:
        return self._clock

    # -- creation -------------------------------------------------------------------------------

    async def create(
        self,
        request: TusRequest,
        body: AsyncIterator[bytes],
        *,
        created: Callable[[str], None] | None = None,
    ) -> TusResponse:
        """A new upload (201 with its ``Location`` under the request's endpoint). ``created`` is
        called with that ``Location`` once the upload exists, before its body is read."""
        return await self._creator.create(request, body, created=created)

    async def create_whole(
        self, request: TusRequest, metadata: Metadata, body: AsyncIterator[bytes]
    ) -> Upload:
        """One whole file of unknown length in one body (a form's file part), received as a tus
        client would send it: created with a deferred length and the body (creation-with-upload),
        then its length declared at the body's end (an empty PATCH), so every limit, hook and
        check of those requests applies. ``body`` may raise a ``ServiceError`` to refuse itself
        (truncated, malformed): then, and on any failure once the upload exists, the upload is
        terminated and the error raised. Returns the upload (``ready`` when its digest was kept
        while it streamed in, else ``verifying``)."""
        return await self._whole.create(request, metadata, body)

    async def discard(self, request: TusRequest) -> None:
        """Terminate an upload that must not stay visible (best effort: a failure is logged)."""
        await self._whole.discard(request)

    # -- status ---------------------------------------------------------------------------------

    async def head(self, request: TusRequest) -> TusResponse:
        check_version(request.headers.tus_resumable)
        upload = await self._loader.load(request)
        if upload.state is UploadState.RECEIVING and not upload.direct:
            upload = await self._reconciler.reconcile_if_idle(
                upload, wait=self._config.lock_timeout
            )
        return TusResponse(
            200, status_headers(upload, request.endpoint), upload_id=upload.id, upload=upload
        )

    async def get(self, request: TusRequest) -> Upload:
        """The upload as the JSON API shows it (any state except unknown)."""
        return await self._loader.found(request)

    # -- appending ------------------------------------------------------------------------------

    async def patch(self, request: TusRequest, body: AsyncIterator[bytes]) -> TusResponse:
        headers = request.headers
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
        content_length = request_content_length(headers)
        checksum = request_checksum(headers)
        upload_id = check_upload_id(request.target)
        # counted until it answers: a HEAD on the upload waits for it unless it is alive
        with self._in_flight.patch(upload_id) as reading:
            body = CountedBody(body, self._events, reading)
            await self._loader.check_reachable(request)

            async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
                upload = await self._loader.load_held(request, lease)
                loaded_state = upload.state
                if upload.is_final:
                    raise Forbidden("a final upload is assembled from its parts and takes no PATCH")
                if upload.direct:
                    raise Forbidden(
                        "a direct upload's bytes go straight to the bucket: it takes no PATCH"
                    )
                if offset != upload.offset:
                    raise OffsetMismatch(
                        f"Upload-Offset {offset} does not match the upload's offset {upload.offset}",
                        headers={"Upload-Offset": str(upload.offset)},
                    )
                # Every check passes before the length is declared: a rejected PATCH changes nothing.
                length = upload.length
                if new_length is not None:
                    await self._check_declared_length(upload, new_length, request)
                    length = new_length
                if content_length is not None:
                    self._limits.check_fits(upload.offset, length, content_length, upload.size_cap)
                if new_length is not None:
                    upload = await self._declare_length(upload, new_length)
                if upload.state is UploadState.RECEIVING:
                    with self._events.receiving():
                        upload = await self._receiver.receive(
                            upload,
                            body,
                            lease,
                            checksum,
                            rules=self._first_bytes_rules(upload, request),
                            content_length=content_length,  # checked against the quota there
                        )
                elif await _has_data(body):  # a chunked body sent to a complete upload
                    raise TooLarge("the upload is already complete")
            if loaded_state is UploadState.RECEIVING and upload.state is UploadState.VERIFYING:
                # this request completed it: the bytes are read back now that the lock is let go
                await self.lifecycle.verify_soon(upload_id)
            return TusResponse(204, offset_headers(upload), upload_id=upload_id, upload=upload)

    def _first_bytes_rules(self, upload: Upload, request: TusRequest) -> ContentRules | None:
        """The rules that check this request's first bytes: only with allowed types configured
        (by the service or the caller's token), at offset 0 (the file's start), and not for a
        partial upload, whose bytes may lie in the middle of the file (a final upload checks its
        first part's first bytes instead)."""
        rules = self._rules.narrowed(request.principal.allowed_types)
        if not rules.restricted or upload.offset != 0 or upload.is_partial:
            return None
        return rules

    async def _check_declared_length(
        self, upload: Upload, length: int, request: TusRequest
    ) -> None:
        if upload.length is not None:
            if length != upload.length:
                raise BadRequest(
                    f"Upload-Length {length} differs from the upload's length {upload.length}"
                )
            return
        # the caps of the service, of the caller now and of the upload's creator
        self._limits.check_max_size(length, request.principal, upload.size_cap)
        if length < upload.offset:
            raise BadRequest(f"Upload-Length {length} is less than the offset {upload.offset}")
        # the owner's quota is checked as the length is declared (``_declare_length``)

    async def _declare_length(self, upload: Upload, length: int) -> Upload:
        """Fix a deferred length (the caller has run ``_check_declared_length``)."""
        if upload.length is not None:
            return upload
        # the deferred upload counted by its offset until now: its length counts instead
        upload = await self._repo.declare_length(
            upload.id, length, self._clock(), self._config.quota
        )
        if length == upload.offset:
            digest = self._digests.take(upload.id, upload.offset)
            upload = await self._committer.complete(upload)
            upload = await self.lifecycle.completed(
                upload, None if digest is None else digest.digest()
            )
        return upload

    # -- termination ----------------------------------------------------------------------------

    async def delete(self, request: TusRequest, *, give_back: bool = False) -> TusResponse:
        """Terminate the upload (``give_back``: one the client never had, whose ticket gets its
        use back; see ``UploadRepository.terminate``)."""
        check_version(request.headers.tus_resumable)
        upload_id = check_upload_id(request.target)
        await self._loader.check_reachable(request)
        async with self._locker.lock(upload_id, wait=self._config.lock_timeout) as lease:
            upload = await self._loader.load_held(request, lease, allow_expired=True)
            # Row first: once it says terminated nothing reads the bytes, so a crash before the
            # delete leaves only an orphan file for clean-up. A partial upload that a final still
            # waits for or is being assembled from is refused there (409), in the database, so
            # that no final created meanwhile can lose it either.
            await self._repo.terminate(upload_id, self._clock(), give_back=give_back)
            self._digests.drop(upload_id)
            await self._store.delete(upload.storage)
        self._events.terminated()
        logger.info("upload terminated", extra={"upload_id": upload_id})
        return TusResponse(204, {}, upload_id=upload_id)

    # -- download -------------------------------------------------------------------------------

    async def downloadable(self, request: TusRequest) -> Upload:
        """The ready upload the request may download. One still being verified is waited for,
        up to ``verify_wait`` seconds (then 503 with ``Retry-After``); one that failed its
        verification meanwhile is a 410, like any failed upload. A partial upload is never
        served (403): its bytes may lie anywhere in a file, so the content rules that check a
        file's first bytes never saw them; a final upload made of it is checked and served."""
        return await self._gate.downloadable(request)

    def read(self, upload: Upload, start: int, end: int) -> AsyncIterator[bytes]:
        return self._gate.read(upload, start, end)

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


async def _has_data(body: AsyncIterator[bytes]) -> bool:
    async for chunk in body:
        if chunk:
            return True
    return False
