"""Python hooks named by tests as ``python:tests.hook_functions:<name>``."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

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


# The copy-on-finish example of docs/hooks.md, as it is documented (the test points SOURCE and DEST at
# its own directories).
SOURCE = Path(os.environ.get("UPLOAD_DATA_DIR", "./data")) / "files"  # local storage
DEST = Path("/srv/archive")


def copy_finished(event: OutboxEvent) -> None:  # sync: runs in the thread pool
    if event.type != "post-finish":
        return
    target = DEST / event.upload_id
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(SOURCE / event.upload_id, "rb") as source, open(partial, "wb") as copy:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            copy.write(chunk)
        copy.flush()
        os.fsync(copy.fileno())
    if digest.hexdigest() != event.upload["sha256"]:
        partial.unlink()
        raise RuntimeError("the copy does not match the upload's sha256")
    os.replace(partial, target)  # delivered twice? the copy is simply made again


def explode(event: OutboxEvent) -> None:
    raise RuntimeError("cannot reach postgres://archive:hunter2@10.9.8.7/archive")
