"""Logging: one configuration for our loggers, uvicorn's and every other library's, in text (for
humans) or JSON (one object a line, for collectors), and the request context log records carry.

``log_config(settings)`` is a ``logging.config.dictConfig`` dictionary. ``serve`` hands it to
uvicorn, which applies it in the supervising process and again in every worker process it spawns
(``--workers N``), so a worker logs exactly like a single process; the other commands apply it
themselves (``configure``). Nothing is configured at import time.

The context records carry (the request id, the upload id) is kept by ``logcontext``, a leaf that
the protocol may import without the settings; ``ContextFilter`` is on the one handler.

What is never logged: request headers (``Authorization`` among them), metadata values, and query
parameter values that are credentials (``redact_query``).
"""

from __future__ import annotations

import logging
import logging.config
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from upload_service.ops.logcontext import CONTEXT_FIELDS, ContextFilter

if TYPE_CHECKING:
    from upload_service.settings import Settings

# Query parameters whose values are credentials (signed URLs, tokens): logged as REDACTED.
SECRET_PARAMETERS = frozenset(
    {
        "signature",
        "sig",
        "token",
        "access_token",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
REDACTED = "REDACTED"


def redact_query(query: str) -> str:
    """``query`` with the values of credential parameters replaced by ``REDACTED``; a query
    that does not parse is replaced whole (it could hide a credential anywhere)."""
    if not query:
        return ""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return REDACTED
    return urlencode(
        [(name, REDACTED if name.lower() in SECRET_PARAMETERS else value) for name, value in pairs],
        safe="/:",
    )


def _utc_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> [request_id=... upload_id=...]``, time in UTC."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc_time(record)} {super().format(record)}"
        context = [
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        ]
        if context:
            first, newline, rest = line.partition("\n")  # after the message, before a traceback
            line = f"{first} [{' '.join(context)}]{newline}{rest}"
        return line


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the
    request's context and the record's ``extra`` fields (unknown ones left out, never null)."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            # uvicorn's ``color_message`` repeats the message with terminal escapes
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = _utc_time(record)
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in log_data.items() if value is not None}


def log_config(settings: Settings) -> dict[str, Any]:
    """The whole logging configuration: one stderr handler on the root logger, which uvicorn's
    loggers (``uvicorn.error``; ``uvicorn.access`` is replaced by ours and stays silent), ours
    and every library's propagate to."""
    level = settings.observability.log_level.upper()
    formatter = "json" if settings.observability.log_format == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {
            "text": {"()": TextFormatter},
            "json": {"()": JsonFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": formatter,
                "filters": ["context"],
            },
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            # our RequestLogMiddleware writes the access lines (UPLOAD_ACCESS_LOG)
            "uvicorn.access": {"handlers": [], "propagate": False},
            # one line a migration step is noise at info
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }


def configure(settings: Settings) -> None:
    """Apply ``log_config`` to this process (the commands other than ``serve``)."""
    logging.config.dictConfig(log_config(settings))
