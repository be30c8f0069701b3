"""The storage contract the tus handler writes through.

A ``Store`` keeps the bytes of uploads by id; it knows nothing of offsets in the database, locks or HTTP.
Callers (the handler) hold the upload's lock around every mutating call, validate ids and offsets
before calling, and commit offsets to the database only after ``Appender.sync`` has returned them.
Implementations translate their native failures into ``StorageError``/``NotFound`` here at the boundary.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol

from upload_service.errors import NotFound

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def check_upload_id(upload_id: str) -> str:
    """Ids are 32 lowercase hex digits; anything else cannot name an upload (and never a path)."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise NotFound("no such upload")
    return upload_id


class Hasher(Protocol):
    """A running digest (hashlib objects fit). Stores feed it every written byte, in order, in the
    worker thread that writes them, never on the event loop."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class Appender(Protocol):
    """Appends one request's bytes to an upload, from the offset it was opened at."""

    @property
    def offset(self) -> int:
        """End offset of the bytes accepted so far (durable or still buffered)."""
        ...

    async def write(self, data: bytes) -> None:
        """Accept bytes; they may be buffered. Raises ``StorageError`` when the medium fails; the
        bytes buffered then are dropped and ``sync`` reports only what was written before."""
        ...

    async def sync(self) -> int:
        """Write out the buffer and make every written byte durable; return the durable end offset.

        Only an offset returned here may be committed to the database or reported to a client.
        Raises ``StorageError`` when bytes could not be written or made durable; after a write
        failure, calling ``sync`` again makes durable and returns the prefix that was written.
        """
        ...

    async def aclose(self) -> None:
        """Release resources. Bytes not covered by a ``sync`` may be lost."""
        ...


class Store(Protocol):
    async def create(self, upload_id: str) -> None:
        """Create empty, durable storage for a new upload. Raises ``StorageError``."""
        ...

    async def append(self, upload_id: str, offset: int, hashers: Sequence[Hasher] = ()) -> Appender:
        """Open the upload for appending at ``offset`` (the committed offset). Bytes stored past
        ``offset`` are uncommitted leftovers of a crash or a failed request and are discarded.
        Every written byte also goes to each of ``hashers`` (after a write failure they are void).
        Raises ``NotFound`` if the upload has no storage, ``StorageError`` if it holds fewer than
        ``offset`` bytes."""
        ...

    async def size(self, upload_id: str) -> int:
        """Bytes currently stored for the upload (used to reconcile after a crash). ``NotFound``."""
        ...

    async def truncate(self, upload_id: str, length: int) -> None:
        """Cut the stored bytes back to ``length`` and make that durable."""
        ...

    def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` in bounded pieces. ``NotFound``/``StorageError``."""
        ...

    async def delete(self, upload_id: str) -> None:
        """Remove the upload's bytes; removing missing bytes is not an error."""
        ...

    async def stored_before(self, moment: datetime) -> list[str]:
        """Ids of every upload whose bytes were last changed before ``moment``: the candidates
        of the sweep for bytes that no upload row names (a crash between creating an upload's
        storage and inserting its row leaves such bytes)."""
        ...

    async def digest(self, upload_id: str, hasher: Hasher) -> bytes:
        """Feed every stored byte to ``hasher`` off the event loop; return its digest."""
        ...

    async def concatenate(self, upload_id: str, parts: Sequence[str]) -> int:
        """Replace the upload's bytes with the parts' bytes in order, durably, without holding
        them in memory; return the length. The caller holds the upload's lock and has checked
        that every part is complete. ``NotFound`` if a part has no storage."""
        ...

    async def check(self) -> None:
        """Raise ``StorageError`` unless the store is reachable and writable (readiness)."""
        ...

    async def aclose(self) -> None: ...
