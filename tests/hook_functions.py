"""Python hooks named by tests as ``python:tests.hook_functions:<name>``."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel

from upload_service.hooks import PreCreate, Reject
from upload_service.outbox import OutboxEvent

seen: list[PreCreate] = []
posted: list[tuple[OutboxEvent, bool]] = []  # the event, and whether it ran off the main thread


def reject(upload: PreCreate) -> None:
    raise Reject("uploads from this tenant are closed", status=402)


def amend(upload: PreCreate) -> dict[str, str | None]:
    seen.append(upload)
    return {**upload.text_metadata, "tenant": "t1"}


async def amend_async(upload: PreCreate) -> dict[str, str | None]:
    await anyio.lowlevel.checkpoint()
    return {"filename": "async.mp4"}


def broken(upload: PreCreate) -> None:
    raise RuntimeError("a bug in the hook")


def slow(upload: PreCreate) -> None:
    threading.Event().wait(2)


def record(event: OutboxEvent) -> None:
    posted.append((event, threading.current_thread() is not threading.main_thread()))
