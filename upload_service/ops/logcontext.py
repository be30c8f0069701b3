"""The request context log records carry, apart from the logging configuration (``logs``) so that
the protocol and the routes can bind the upload id without importing the settings.

``requestlog.RequestLogMiddleware`` opens a ``RequestContext`` (its request id) for each HTTP
request; the tus routes and the handler add the upload id once they know it (``bind_upload_id``).
``ContextFilter``, on the one handler, copies them onto every record logged while the request
runs, whichever logger logs it; a record that names its own ``upload_id`` (``extra=``, as
background work does) keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# Fields a record carries when they are known, in the order a text line shows them.
CONTEXT_FIELDS = ("request_id", "upload_id")


@dataclass(slots=True)
class RequestContext:
    """What the log records of one request carry; mutable, because the route that learns the
    upload id may run in another task or thread than the middleware that logs the access line."""

    request_id: str
    upload_id: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("upload_service_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


@contextmanager
def request_context(request_id: str) -> Iterator[RequestContext]:
    """Every record logged inside carries ``request_id`` (and the upload id once bound)."""
    context = RequestContext(request_id)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def bind_upload_id(upload_id: str | None) -> None:
    """The request being served concerns this upload (a no-op outside a request)."""
    context = _current.get()
    if context is not None and upload_id:
        context.upload_id = upload_id


class ContextFilter(logging.Filter):
    """Copies the request's context onto the record (never replacing a field the record has)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            if getattr(record, "request_id", None) is None:
                record.request_id = context.request_id
            if getattr(record, "upload_id", None) is None and context.upload_id is not None:
                record.upload_id = context.upload_id
        return True
