"""How the client's commands end: an ``ExitError`` carries the process's exit status."""

from __future__ import annotations

# Exit statuses of ``upload``, ``status`` and ``download`` (documented in the README).
OK = 0
FAILED = 1  # gave up: network errors or 5xx answers without progress, a digest that differs
USAGE = 2  # bad arguments, a file that cannot be read
AUTH = 3  # 401 or 403: no token, a wrong or expired one, another owner's upload
REFUSED = 4  # any other 4xx: too large, type not allowed, unknown or ended upload, bad metadata
INTERRUPTED = 130  # Ctrl+C: run the same command again to resume


class ExitError(Exception):
    """End the command with ``status`` after printing ``message`` (one line) to stderr."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def refused(status: int, method: str, url: str, reason: str) -> ExitError:
    """The error for a final (non-retryable) 4xx answer."""
    code = AUTH if status in (401, 403) else REFUSED
    text = f"{method} {url}: {status} {reason}".rstrip()
    return ExitError(text, code)
