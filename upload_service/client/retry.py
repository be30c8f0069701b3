"""Retrying with exponential backoff, bounded by attempts that make no progress."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from upload_service.client.errors import FAILED, ExitError

Note = Callable[[str], None]  # prints a one-line note (a retry) above the progress display

# Answers worth trying again: the upload is busy (423), the server or a proxy is overloaded or
# restarting (429, 5xx; 503 carries Retry-After). 409 and 460 are handled by the uploader.
RETRYABLE = frozenset({423, 429, 500, 502, 503, 504, 507})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8  # consecutive failures without progress before giving up
    base: float = 0.5  # first delay, doubled per failure (with jitter)
    cap: float = 30.0  # longest delay, Retry-After included

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        backoff = min(self.base * 2.0 ** max(failures - 1, 0), self.cap)
        return backoff * random.uniform(0.5, 1.0)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), None when absent or malformed."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


class Retrying:
    """One transfer's failure count: ``failed`` sleeps before the next attempt, or gives up
    (``ExitError``, exit status 1) after ``policy.attempts`` failures in a row without progress;
    ``progressed`` starts the count again. ``stop`` ends a sleep early (Ctrl+C, a failed part)."""

    def __init__(self, policy: RetryPolicy, stop: threading.Event, note: Note) -> None:
        self._policy = policy
        self._stop = stop
        self._note = note
        self.failures = 0

    def progressed(self) -> None:
        self.failures = 0

    def failed(self, what: str, wait: float | None = None) -> None:
        self.failures += 1
        if self.failures >= self._policy.attempts:
            raise ExitError(f"giving up after {self.failures} attempts: {what}", FAILED)
        delay = self._policy.delay(self.failures, wait)
        self._note(f"{what}; retrying in {delay:.1f}s ({self.failures}/{self._policy.attempts})")
        if self._stop.wait(delay):
            raise Stopped()


class Stopped(Exception):
    """The command is stopping (Ctrl+C, or another part failed): end this transfer now."""
