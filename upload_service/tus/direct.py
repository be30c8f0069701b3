"""Direct uploads: the client sends an upload's bytes straight to the store (S3: the parts of a
multipart upload PUT to presigned URLs, or a small file form-POSTed under a presigned policy),
and the service keeps everything else: the row and its states, the owner, the ticket, the quotas
and caps, the hooks, the verification. What Uppy's AwsS3 plugin asks of a Companion server is
answered from here (``api.companion`` is its HTTP adapter); this module knows no web framework.

An upload is made ``receiving`` with ``direct`` set when the client starts it. Its offset stays 0
while the bytes go to the store (no request of ours sees them); at the end the service learns the
real size from the store, checks it against the caps, the declared length and the owner's quota,
and only then moves the offset to it and completes the upload: ``verifying``, then, from the
whole-file sha256 streamed back from the store in a worker thread, ``ready`` (or ``failed``).
An upload that breaks a rule at the end is failed with the reason and its bytes deleted (its
multipart upload aborted), so nothing over a cap stays stored or billable.

A multipart upload ends when the client asks to ``complete`` it. A form POST tells the service
nothing: ``settle_posts`` (run every few seconds by the app, on every replica) looks for the
objects of the POST uploads still receiving and finishes those that arrived. Both ends, and the
refusals, are ``direct_end``'s; this module starts uploads and answers while they are sent.

Crash story: the store's multipart upload (or policy) is made first, then the row, as for a tus
creation: a crash in between leaves an orphan the clean-up sweep removes. The end's story is in
``direct_end``. An upload never completed is aborted by the expiry sweep like any other, its
parts deleted.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from upload_service.auth.principal import Principal
from upload_service.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    ServiceError,
    TooLarge,
    Unauthorized,
)
from upload_service.events import Events
from upload_service.hooks.pre_create import PreCreate, PreCreateHook
from upload_service.lifecycle import Lifecycle, parse_sha256
from upload_service.ops.logcontext import bind_upload_id
from upload_service.storage.base import (
    DirectPart,
    DirectStore,
    PostPolicy,
    StorageKey,
    Store,
    check_upload_id,
)
from upload_service.tus.content_types import ContentRules
from upload_service.tus.creation import stamped
from upload_service.tus.direct_end import MAX_PART_NUMBER, DirectEnd
from upload_service.tus.load import UploadLoader
from upload_service.tus.protocol import decode_metadata, encode_metadata
from upload_service.tus.types import Backends, HandlerConfig
from upload_service.uploads import Metadata, Upload, UploadState, smallest

logger = logging.getLogger("upload_service.direct")

POST_GRACE = 300  # seconds a form-POST upload outlives its policy before it expires
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part but the last: a part's least start offset
NOT_DIRECT = "this server's storage takes no direct uploads: they need UPLOAD_STORAGE=s3"


@dataclass(frozen=True, slots=True)
class Started:
    """A direct upload just made: the row, the object key the client names it by, and the store's
    multipart upload id (None for a form POST's), or the POST policy."""

    upload: Upload
    key: str
    multipart_id: str | None = None
    policy: PostPolicy | None = None


def part_number(raw: str) -> int:
    """A part number from the client (1..10,000): 400 otherwise."""
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PART_NUMBER:
        raise BadRequest(f"part number must be between 1 and {MAX_PART_NUMBER}, not {raw[:20]!r}")
    return int(raw)


class DirectUploads:
    """Direct uploads over a ``DirectStore`` (``NOT_DIRECT`` on any other store)."""

    def __init__(
        self,
        *,
        backends: Backends,
        config: HandlerConfig,
        events: Events,
        rules: ContentRules,
        lifecycle: Lifecycle,
        loader: UploadLoader,
        pre_create: PreCreateHook,
    ) -> None:
        self._store: Store = backends.store
        self._repo = backends.repository
        self._locker = backends.locker
        self._clock: Callable[[], datetime] = backends.clock
        self._config = config
        self._events = events
        self._rules = rules
        self._lifecycle = lifecycle
        self._loader = loader
        self._pre_create = pre_create
        # the end of an upload (complete, the form POSTs' objects, refusals): None off S3
        self._end = (
            DirectEnd(
                store=backends.store,
                backends=backends,
                config=config,
                events=events,
                rules=rules,
                lifecycle=lifecycle,
                loader=loader,
            )
            if isinstance(backends.store, DirectStore)
            else None
        )

    @property
    def available(self) -> bool:
        return isinstance(self._store, DirectStore)

    def _direct(self) -> DirectStore:
        if not isinstance(self._store, DirectStore):
            raise ServiceError(NOT_DIRECT, status=501)
        return self._store

    def _ending(self) -> DirectEnd:
        if self._end is None:
            raise ServiceError(NOT_DIRECT, status=501)
        return self._end

    # -- starting ---------------------------------------------------------------------------------

    async def start_multipart(
        self,
        principal: Principal,
        *,
        filename: str | None,
        content_type: str | None,
        metadata: Mapping[str, str],
        size: int | None = None,
    ) -> Started:
        """A new direct upload whose parts the client PUTs to ``sign_part``'s URLs."""
        store = self._direct()
        upload = await self._new(principal, filename, content_type, metadata, size)
        key = await store.begin_multipart(upload.id, content_type or None)
        upload = await self._insert(upload, key)
        multipart_id = store.multipart_id(key)
        return Started(upload, store.object_key(key), multipart_id=multipart_id)

    async def start_post(
        self,
        principal: Principal,
        *,
        filename: str | None,
        content_type: str | None,
        metadata: Mapping[str, str],
        size: int | None = None,
    ) -> Started:
        """A new direct upload the client form-POSTs in one request under the returned policy,
        which caps its size (the store refuses more) and fixes its type when one is given."""
        store = self._direct()
        upload = await self._new(principal, filename, content_type, metadata, size)
        # nothing can arrive once the policy has expired: the upload expires soon after, so
        # that the look for its object stops (the grace covers a look that was late)
        ttl = self._config.direct_url_ttl
        upload = replace(upload, expires_at=upload.created_at + timedelta(seconds=ttl + POST_GRACE))
        cap = smallest(self._config.max_size, upload.size_cap, upload.length)
        key, policy = await store.begin_post(
            upload.id,
            max_size=cap,
            content_type=content_type or None,
            expires_in=ttl,
        )
        upload = await self._insert(upload, key)
        return Started(upload, store.object_key(key), policy=policy)

    async def _new(
        self,
        principal: Principal,
        filename: str | None,
        content_type: str | None,
        fields: Mapping[str, str],
        size: int | None,
    ) -> Upload:
        metadata: Metadata = {key: value.encode() for key, value in fields.items()}
        if filename:
            metadata["filename"] = filename.encode()
        if content_type:
            metadata["filetype"] = content_type.encode()
        metadata = stamped(metadata, principal)
        # the limits and the key rules of a tus creation's Upload-Metadata, on the same text
        decode_metadata(
            encode_metadata(metadata),
            max_bytes=self._config.max_metadata_bytes,
            max_keys=self._config.max_metadata_keys,
        )
        if size is not None:
            if size < 0:
                raise BadRequest("size must be a whole number of bytes")
            limit = smallest(self._config.max_size, principal.max_size)
            if limit is not None and size > limit:
                raise TooLarge(f"size {size} exceeds the maximum size {limit}")
        metadata = await self._pre_create.check(
            PreCreate(
                length=size, metadata=metadata, owner=principal.owner, ticket=principal.ticket
            )
        )
        if metadata.get("sha256") is not None:
            parse_sha256(metadata["sha256"] or b"")
        self._rules.narrowed(principal.allowed_types).check_declared(metadata)
        now = self._clock()
        return Upload(
            id=uuid.uuid4().hex,
            length=size,
            offset=0,
            received=0,
            state=UploadState.RECEIVING,
            metadata=metadata,
            created_at=now,
            updated_at=now,
            expires_at=self._config.expiry(now),
            owner=principal.owner,
            size_cap=principal.max_size,
            ticket=principal.ticket,
            direct=True,
        )

    async def _insert(self, upload: Upload, key: StorageKey) -> Upload:
        # Store first, then row: a crash in between leaves an orphan the sweep removes.
        upload = replace(upload, storage_ref=key.ref)
        try:
            await self._repo.add(upload, self._config.quota)
        except (QuotaExceeded, Forbidden, Unauthorized):
            await self._store.delete(key)
            raise
        self._events.created()
        bind_upload_id(upload.id)
        logger.info(
            "direct upload created (length %s)",
            "deferred" if upload.length is None else upload.length,
            extra={"upload_id": upload.id, "owner": upload.owner},
        )
        return upload

    # -- while the client sends -------------------------------------------------------------------

    async def find(self, principal: Principal, key: str, multipart_id: str | None) -> Upload:
        """The direct upload the client names by its object ``key`` (and multipart upload id):
        404 unless it is one of this caller's (another owner's, another ticket's, a tus upload,
        a key and id that do not belong together all do not exist for it)."""
        store = self._direct()
        upload_id = key[-32:]  # a key is the store's prefix and the upload's id
        if store.object_key(check_upload_id(upload_id)) != key:
            raise NotFound("no such upload")
        upload = self._loader.reachable(await self._repo.get(upload_id), principal)
        if upload is None or not upload.direct:
            raise NotFound("no such upload")
        if multipart_id is not None and store.multipart_id(upload.storage) != multipart_id:
            raise NotFound("no such upload")
        return upload

    async def sign_part(self, upload: Upload, number: int) -> str:
        """A presigned URL for part ``number`` of a receiving direct upload. A part that would
        start past the upload's caps (every part but the last has at least 5 MiB) is refused
        here already: 413."""
        self._receiving(upload)
        limit = smallest(self._config.max_size, upload.size_cap, upload.length)
        if limit is not None and number > 1 and (number - 1) * MIN_PART_SIZE >= limit:
            refusal = TooLarge(
                f"part {number} would start past the upload's maximum size of {limit} bytes"
            )
            async with self._locker.lock(upload.id, wait=self._config.lock_timeout):
                await self._ending().refuse(
                    upload, refusal
                )  # the file is too large: nothing to keep
            raise refusal
        await self._keep_alive(upload)
        return await self._direct().sign_part(upload.storage, number, self._config.direct_url_ttl)

    async def _keep_alive(self, upload: Upload) -> None:
        """A client still asking for parts keeps its upload from expiring, as a tus upload's
        commits do: once half of ``UPLOAD_EXPIRE_AFTER`` has passed, the expiry moves on (one
        write now and then, not one a part)."""
        now = self._clock()
        if upload.expires_at is None:
            return
        if upload.expires_at - now > timedelta(seconds=self._config.expire_after / 2):
            return
        with contextlib.suppress(Conflict):  # ended or completed meanwhile: nothing to keep
            await self._repo.advance(
                upload.id,
                expected=upload.offset,
                offset=upload.offset,
                now=now,
                expires_at=self._config.expiry(now),
            )

    async def parts(self, upload: Upload) -> list[DirectPart]:
        """The parts the store holds so far (for a client that resumes)."""
        self._receiving(upload)
        try:
            return await self._direct().direct_parts(upload.storage)
        except NotFound:
            raise Conflict("the upload's parts are gone: it was completed or aborted") from None

    def _receiving(self, upload: Upload) -> Upload:
        upload = self._loader.live(upload)
        if upload.state is not UploadState.RECEIVING:
            raise Conflict(f"the upload is {upload.state.value}: it takes no more parts")
        return upload

    async def abort(self, upload: Upload) -> None:
        """The client gives the upload up: terminated (post-terminate), its parts deleted."""
        async with self._locker.lock(upload.id, wait=self._config.lock_timeout):
            current = await self._repo.get(upload.id)
            if current is None or current.state is not UploadState.RECEIVING:
                return
            await self._repo.terminate(upload.id, self._clock())
            await self._store.delete(current.storage)
        self._events.terminated()
        logger.info("direct upload aborted", extra={"upload_id": upload.id})

    async def download_url(self, upload: Upload) -> str | None:
        """A presigned GET of a ready upload's object, named and typed by its metadata (None
        when the store cannot presign: the service serves the bytes itself)."""
        if not isinstance(self._store, DirectStore):
            return None

        def text(key: str) -> str | None:
            raw = upload.metadata.get(key)
            return None if not raw else raw.decode("utf-8", errors="replace")

        return await self._store.sign_get(
            upload.storage,
            self._config.direct_url_ttl,
            filename=text("filename"),
            content_type=text("filetype"),
        )

    async def complete(
        self, principal: Principal, upload: Upload, parts: Sequence[tuple[int, str]]
    ) -> Upload:
        """See ``DirectEnd.complete``."""
        return await self._ending().complete(principal, upload, parts)

    async def settle_posts(self) -> int:
        """See ``DirectEnd.settle_posts`` (0 off S3)."""
        return 0 if self._end is None else await self._end.settle_posts()
