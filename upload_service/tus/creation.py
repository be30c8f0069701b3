"""Creating uploads (the creation, creation-with-upload, creation-defer-length and
concatenation extensions). What creation shares with PATCH lives apart: the body readers in
``body``, the header readers in ``request``, the offset headers in ``protocol``.

Crash story: the store's file (or multipart upload) is made first, then the row. A crash in
between leaves an orphan the clean-up task removes, never a row without bytes. A creation with
data then receives the body exactly as a PATCH does (``receive.Receiver``); when that body is
refused (too large, wrong checksum) the client never learned the upload's URL, so the row is
terminated and the bytes deleted.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from upload_service.auth.principal import Principal
from upload_service.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    QuotaExceeded,
    TooLarge,
    Unauthorized,
)
from upload_service.events import NO_EVENTS, Events
from upload_service.hooks.pre_create import NO_PRE_CREATE, PreCreateHook, pre_create_of
from upload_service.lifecycle import Lifecycle, parse_sha256
from upload_service.ops.logcontext import bind_upload_id
from upload_service.storage.base import Concatenator
from upload_service.tus.body import CountedBody
from upload_service.tus.checksum import Checksum, ChecksumMismatch
from upload_service.tus.concat import check_parts, first_bytes
from upload_service.tus.content_types import ContentRules
from upload_service.tus.inflight import InFlight
from upload_service.tus.limits import Limits
from upload_service.tus.load import UploadLoader
from upload_service.tus.protocol import (
    OFFSET_CONTENT_TYPE,
    check_version,
    decode_metadata,
    offset_headers,
    parse_concat,
    parse_uint,
)
from upload_service.tus.receive import Receiver
from upload_service.tus.request import (
    TusHeaders,
    TusRequest,
    request_checksum,
    request_content_length,
)
from upload_service.tus.types import Backends, HandlerConfig, TusResponse
from upload_service.uploads import Metadata, Upload, UploadState

logger = logging.getLogger("upload_service.tus")

if TYPE_CHECKING:
    pass


class Creator:
    def __init__(
        self,
        *,
        backends: Backends,
        config: HandlerConfig,
        events: Events,
        rules: ContentRules,
        lifecycle: Lifecycle,
        loader: UploadLoader,
        receiver: Receiver,
        limits: Limits,
        in_flight: InFlight,
        pre_create: PreCreateHook = NO_PRE_CREATE,
    ) -> None:
        self._in_flight = in_flight
        self._store = backends.store
        self._repo = backends.repository
        self._locker = backends.locker
        self._config = config
        self._clock = backends.clock
        self._events = events
        self._rules = rules
        self._lifecycle = lifecycle
        self._loader = loader
        self._receiver = receiver
        self._limits = limits
        self._pre_create = pre_create

    async def create(
        self,
        request: TusRequest,
        body: AsyncIterator[bytes],
        *,
        created: Callable[[str], None] | None = None,
    ) -> TusResponse:
        """A new upload (201 with its ``Location`` under the request's endpoint). ``created`` is
        called with that ``Location`` once the upload exists, before its body is read (the IETF
        draft's 104 is sent from it)."""
        headers = request.headers
        check_version(headers.tus_resumable)
        concat = parse_concat(headers.upload_concat)
        if concat is not None and not isinstance(self._store, Concatenator):
            raise BadRequest("concatenation is not supported by this server's storage")
        metadata = decode_metadata(
            headers.upload_metadata or "",
            max_bytes=self._config.max_metadata_bytes,
            max_keys=self._config.max_metadata_keys,
        )
        metadata = stamped(metadata, request.principal)
        length = (
            None
            if concat is not None and concat.final
            else self._creation_length(headers, request.principal)
        )
        metadata = await self._pre_create.check(  # may refuse, or amend the metadata
            pre_create_of(request, length, concat, metadata)
        )
        if metadata.get("sha256") is not None:
            parse_sha256(metadata["sha256"] or b"")
        principal = request.principal
        rules = self._rules.narrowed(principal.allowed_types)  # the service's and the token's
        rules.check_declared(metadata)
        with_data = media_type(headers.content_type) == OFFSET_CONTENT_TYPE
        if with_data:
            body = CountedBody(body, self._events)
        if concat is not None and concat.final:
            return await self._create_final(
                request, concat.urls, metadata, with_data, rules, created
            )
        checksum = request_checksum(headers) if with_data else None
        content_length = request_content_length(headers)
        if with_data and content_length is not None:
            self._limits.check_fits(0, length, content_length, principal.max_size)
        if with_data and concat is None and rules.restricted:
            # the file's first bytes are checked before anything is created
            limit = self._limits.limit(0, length, principal.max_size)
            body = await self._receiver.checked_head(body, rules, limit)

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
            expires_at=None if complete else self._config.expiry(now),
            completed_at=now if complete else None,
            concat=None if concat is None else "partial",
            owner=principal.owner,
            size_cap=principal.max_size,
            ticket=principal.ticket,
        )
        # File first, then row: a crash in between leaves an orphan file, never a row without bytes.
        key = await self._store.create(upload_id, upload.length)
        upload = replace(upload, storage_ref=key.ref)
        try:
            await self._repo.add(upload, self._config.quota)
        except (QuotaExceeded, Forbidden, Unauthorized):  # a quota, or a ticket used up or gone
            await self._store.delete(key)
            raise
        self._events.created()
        bind_upload_id(upload_id)
        logger.info(
            "upload created (length %s%s)",
            "deferred" if length is None else length,
            "" if concat is None else ", partial",
            extra={"upload_id": upload_id, "owner": upload.owner},  # as auth.owners writes it
        )
        location = self._location(request, upload_id)
        if created is not None:
            created(location)
        if complete:
            upload = await self._lifecycle.completed(upload, hashlib.sha256().digest())
        elif with_data:
            upload = await self._receive_first(upload, body, checksum)
        response = offset_headers(upload)
        response["Location"] = location
        return TusResponse(201, response, upload_id=upload_id, upload=upload)

    async def _receive_first(
        self, upload: Upload, body: AsyncIterator[bytes], checksum: Checksum | None
    ) -> Upload:
        """creation-with-upload: the body received as a PATCH at offset 0 would be, and counted
        in flight as a PATCH is: a client told the upload's URL early (the IETF draft's 104)
        may ask for its offset the moment the body broke off."""
        with self._in_flight.patch(upload.id) as reading:
            body = CountedBody(body, NO_EVENTS, reading)
            async with self._locker.lock(upload.id, wait=self._config.lock_timeout) as lease:
                upload = await self._loader.hold(upload, lease)
                try:
                    with self._events.receiving():
                        upload = await self._receiver.receive(upload, body, lease, checksum)
                except (TooLarge, QuotaExceeded, ChecksumMismatch):
                    # The client never learns this upload's URL from an error: leave nothing,
                    # and give its ticket (if it was made with one) the use back.
                    await self._repo.terminate(upload.id, self._clock(), give_back=True)
                    await self._store.delete(upload.storage)
                    raise
        if upload.state is UploadState.VERIFYING:
            await self._lifecycle.verify_soon(upload.id)
        return upload

    def _location(self, request: TusRequest, upload_id: str) -> str:
        return request.endpoint.url(upload_id, relative=self._config.relative_location)

    async def _create_final(
        self,
        request: TusRequest,
        urls: tuple[str, ...],
        metadata: Metadata,
        with_data: bool,
        rules: ContentRules,
        created: Callable[[str], None] | None,
    ) -> TusResponse:
        headers = request.headers
        if headers.upload_length is not None or headers.upload_defer_length is not None:
            raise BadRequest("a final upload takes its length from its parts: omit Upload-Length")
        if with_data:
            raise BadRequest("a final upload cannot carry data")
        part_ids = tuple(request.endpoint.upload_id(url) for url in urls)
        found = await self._repo.get_many(part_ids)
        parts = {
            part_id: part
            for part_id, part in found.items()
            if self._loader.reachable(part, request.principal) is not None
        }
        length = check_parts(part_ids, parts, self._clock())
        if length is not None:
            self._limits.check_max_size(length, request.principal)
        if rules.restricted:  # the final's first bytes are its first parts'
            head = await first_bytes(
                self._store, [parts[part_id] for part_id in part_ids], rules.head_size
            )
            await rules.check_head(head, short=False)
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
            owner=request.principal.owner,
            size_cap=request.principal.max_size,  # checked at assembly when lengths are deferred
            ticket=request.principal.ticket,
        )
        key = await self._store.create(final.id, final.length)
        final = replace(final, storage_ref=key.ref)
        try:
            await self._repo.add_final(final, self._config.quota)
        except (QuotaExceeded, Forbidden, Unauthorized):
            await self._store.delete(key)
            raise
        except Conflict as exc:
            await self._store.delete(key)
            raise BadRequest(exc.message) from exc
        self._events.created()
        bind_upload_id(final.id)
        logger.info(
            "final upload created of %d parts",
            len(part_ids),
            extra={"upload_id": final.id, "owner": final.owner},
        )
        location = self._location(request, final.id)
        if created is not None:
            created(location)
        await self._lifecycle.assemble_soon(final.id)
        return TusResponse(201, {"Location": location}, final.id, final)

    def _creation_length(self, headers: TusHeaders, principal: Principal) -> int | None:
        if headers.upload_length is not None and headers.upload_defer_length is not None:
            raise BadRequest("send either Upload-Length or Upload-Defer-Length, not both")
        if headers.upload_defer_length is not None:
            if headers.upload_defer_length.strip() != "1":
                raise BadRequest("Upload-Defer-Length must be 1")
            return None
        if headers.upload_length is None:
            raise BadRequest("Upload-Length or Upload-Defer-Length: 1 is required")
        length = parse_uint("Upload-Length", headers.upload_length)
        self._limits.check_max_size(length, principal)
        return length


def stamped(metadata: Metadata, principal: Principal) -> Metadata:
    """``metadata`` with the fields the caller's ticket stamps on every upload it makes (they
    win over the client's own)."""
    if not principal.stamp:
        return metadata
    return {**metadata, **{key: value.encode() for key, value in principal.stamp}}


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()
