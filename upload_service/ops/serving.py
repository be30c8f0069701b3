"""``serve``'s HTTP protocol: running uploads are drained the moment uvicorn begins to shut down.

On SIGTERM or SIGINT uvicorn stops accepting connections, asks every open connection to shut down,
waits up to ``timeout_graceful_shutdown`` (``UPLOAD_SHUTDOWN_GRACE``) for in-flight requests,
cancels what is left, and only then runs the lifespan's shutdown. A PATCH streaming a large body
would use up the whole grace and be cancelled; so when its connection is asked to shut down, the
app's drain hook runs first: every running PATCH lets go through the path a preempting request
uses, makes its bytes durable, commits and answers 204 with its offset, and the wait is short.

The hook travels in the ASGI lifespan state (``app.DRAIN``, set by the app's lifespan), and the
protocol is uvicorn's own with that one call added, so it works in every worker process of
``--workers`` alike: each drains its own requests when the supervisor passes the signal on.
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from upload_service.app import DRAIN


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    def shutdown(self) -> None:
        drain: Callable[[], object] | None = self.app_state.get(DRAIN)
        if drain is not None:
            drain()  # idempotent: every connection's shutdown calls it
        super().shutdown()
