"""A whole file of unknown length in one request body (a form's file part), received through
the same tus machinery as any upload (``WholeFiles``, behind ``TusHandler.create_whole``): created
with a deferred length and the body (creation-with-upload), then its length declared at the
body's end (an empty PATCH), so every limit, hook and check of those requests applies.

The body is the file alone; it ends when the file does. It may refuse itself by raising a
``ServiceError`` (a truncated or malformed form): ``WholeBody`` then ends the iteration cleanly, so
the receiver commits what arrived as for any body, and the upload is terminated and the body's
error raised. Nothing half-received stays visible.

Crash story (what a kill -9 at each step leaves): before the creation, nothing; during the body,
an upload receiving with a deferred length and the prefix its receive committed (see
``receive``), whose URL the client was never told: it expires like any abandoned upload and the
clean-up removes it; after the length was declared, a complete upload that is verified like
any other (start-up resumes the verification). A failure in the process terminates the upload
(best effort, shielded from cancellation).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

import anyio

from upload_service.errors import ClientGone, ServiceError, TooLarge, Unavailable
from upload_service.tus.body import no_body
from upload_service.tus.limits import Limits
from upload_service.tus.protocol import OFFSET_CONTENT_TYPE, TUS_VERSION, encode_metadata
from upload_service.tus.request import TusHeaders, TusRequest, declaring_end
from upload_service.tus.types import TusResponse
from upload_service.uploads import Metadata, Upload

logger = logging.getLogger("upload_service.tus")

VERSION_ONLY = TusHeaders(tus_resumable=TUS_VERSION)  # the headers of an internal HEAD or DELETE


class TusOperations(Protocol):
    """The requests a whole file is received by (``TusHandler`` has them)."""

    async def create(self, request: TusRequest, body: AsyncIterator[bytes]) -> TusResponse: ...

    async def patch(self, request: TusRequest, body: AsyncIterator[bytes]) -> TusResponse: ...

    async def delete(self, request: TusRequest, *, give_back: bool = False) -> TusResponse: ...

    async def get(self, request: TusRequest) -> Upload: ...


class WholeFiles:
    """Whole files received as a tus client would send them, through ``operations``."""

    def __init__(self, *, operations: TusOperations, limits: Limits) -> None:
        self._tus = operations
        self._limits = limits

    async def create(
        self, request: TusRequest, metadata: Metadata, body: AsyncIterator[bytes]
    ) -> Upload:
        """One whole file in ``body``: see ``TusHandler.create_whole``."""
        limit, refusal = await self._limits.whole(request.principal)
        whole = WholeBody(body, limit, refusal)
        headers = TusHeaders(
            tus_resumable=TUS_VERSION,
            content_type=OFFSET_CONTENT_TYPE,
            upload_defer_length="1",
            upload_metadata=encode_metadata(metadata),
        )
        try:
            created = await self._tus.create(replace(request, headers=headers), whole)
        except ServiceError:
            if whole.error is not None:  # e.g. a type refused on the first bytes of a cut body
                raise whole.error from None
            raise
        target = replace(request, upload_id=created.upload_id, headers=VERSION_ONLY)
        try:
            whole.check()
            declare = declaring_end(whole.received)
            await self._tus.patch(replace(target, headers=declare), no_body())
            return await self._tus.get(target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.discard(target)
            raise

    async def discard(self, request: TusRequest) -> None:
        """Terminate an upload that must not stay visible (best effort: a failure is logged); its
        ticket, if it was made with one, gets the use back (the client never had the upload)."""
        try:
            await self._tus.delete(replace(request, headers=VERSION_ONLY), give_back=True)
        except ServiceError as exc:
            logger.warning(
                "could not discard the upload: %s",
                exc.message,
                extra={"upload_id": request.upload_id},
            )


class WholeBody:
    """The file's bytes, counted and cut at ``limit``: an error of the inner body (or running
    past the limit: ``past_limit``, else a 413) is kept in ``error`` and ends the iteration;
    ``finished`` says the inner body ended by itself. (Not an async generator: see
    ``body.CountedBody``.)"""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        limit: int | None,
        past_limit: ServiceError | None = None,
    ) -> None:
        self._body = aiter(body)
        self._limit = limit
        self._past_limit = past_limit
        self.received = 0
        self.finished = False
        self.error: ServiceError | ClientGone | None = None

    def __aiter__(self) -> WholeBody:
        return self

    async def __anext__(self) -> bytes:
        if self.finished or self.error is not None:
            raise StopAsyncIteration
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            self.finished = True
            raise
        except (ServiceError, ClientGone) as exc:
            self.error = exc
            raise StopAsyncIteration from None
        if self._limit is not None and self.received + len(chunk) > self._limit:
            self.error = self._past_limit or TooLarge(
                f"the file is larger than the maximum size {self._limit}"
            )
            raise StopAsyncIteration
        self.received += len(chunk)
        return chunk

    def check(self) -> None:
        """Raise why the body did not arrive whole (its own error, or an interruption)."""
        if self.error is not None:
            raise self.error
        if not self.finished:
            raise Unavailable("the upload was interrupted (the service is stopping); send it again")
