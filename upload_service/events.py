"""What the service reports about itself, as calls on an ``Events`` object.

The tus handler, the lifecycle and the locker wrapper report through this Protocol and know nothing
of who listens; ``NoEvents`` (the default) ignores everything, ``metrics.PrometheusMetrics`` counts.
Every method is called on the event loop, must not block and must not raise.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol


class Events(Protocol):
    def created(self) -> None:
        """An upload was created (a partial, a final or a plain one)."""

    def finished(self) -> None:
        """An upload became ready (its bytes verified)."""

    def failed(self) -> None:
        """An upload failed (a digest mismatch, or a final upload that could not be assembled)."""

    def terminated(self) -> None:
        """An upload was terminated by a DELETE."""

    def expired(self, count: int) -> None:
        """``count`` unfinished uploads expired in one clean-up pass."""

    def received(self, size: int) -> None:
        """``size`` request body bytes were read for an upload."""

    def receiving(self) -> AbstractContextManager[None]:
        """Held while a request's body is being received for an upload."""

    def lock_waited(self, seconds: float, acquired: bool) -> None:
        """A lock request took ``seconds``; it got the lock or gave up (423)."""

    def release_requested(self) -> None:
        """The holder of a lock was asked to let go of it for another request."""

    def release_honoured(self) -> None:
        """A holder asked to let go of its lock let go of it."""

    def pre_create_hook(self, outcome: str) -> None:
        """The pre-create hook answered: ``allowed``, ``amended``, ``rejected`` or
        ``unavailable`` (the creation failed closed, 503)."""

    def hook_delivery(self, event_type: str, outcome: str) -> None:
        """One delivery attempt of an event (``post-finish``, ...) ended: ``delivered``,
        ``retried`` (it failed and is tried again later) or ``failed`` (it failed for good)."""

    def hook_delivery_failed(self, event_type: str, reason: str) -> None:
        """A delivery attempt failed, for ``reason`` (``FailureReason.label``: ``server_error``,
        ``timeout``, ``hook_error``, ...)."""


class NoEvents:
    def created(self) -> None:
        pass

    def finished(self) -> None:
        pass

    def failed(self) -> None:
        pass

    def terminated(self) -> None:
        pass

    def expired(self, count: int) -> None:
        pass

    def received(self, size: int) -> None:
        pass

    def receiving(self) -> AbstractContextManager[None]:
        return nullcontext()

    def lock_waited(self, seconds: float, acquired: bool) -> None:
        pass

    def release_requested(self) -> None:
        pass

    def release_honoured(self) -> None:
        pass

    def pre_create_hook(self, outcome: str) -> None:
        pass

    def hook_delivery(self, event_type: str, outcome: str) -> None:
        pass

    def hook_delivery_failed(self, event_type: str, reason: str) -> None:
        pass


NO_EVENTS: Events = NoEvents()
