"""A whole file of unknown length in one request body (a form's file part), received through
the same tus machinery as any upload: ``TusHandler.create_whole``.

The body is the file alone; it ends when the file does. It may refuse itself by raising a
``ServiceError`` (a truncated or malformed form): ``WholeBody`` then ends the iteration cleanly, so
the receiver commits what arrived as for any body, and the handler terminates the upload and raises
the body's error. Nothing half-received stays visible.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from upload_service.errors import ClientGone, ServiceError, TooLarge, Unavailable


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
