"""The storage contract the tus handler writes through: a small core plus optional capabilities.

A ``Store`` keeps the bytes of uploads; it knows nothing of offsets in the database, locks or HTTP.
``create`` returns a ``StorageKey``: the upload's id plus whatever reference the backend needs to
find the bytes again (an object store's multipart upload id), which the upload's row keeps and
every later call passes back. What only some backends can do is a separate, runtime-checkable
capability Protocol (``Finisher``, ``Concatenator``, ``TailDiscarder``, ``Digester``,
``OrphanLister``, ``Reserver``, and ``Checkpointer`` for appenders); the handler checks for each with
``isinstance``, advertises in ``Tus-Extension`` only what the configured store supports, and falls
back (or refuses) otherwise. ``DirectStore`` is the capability of an object store that lets
browsers send an upload's bytes straight to it (presigned URLs): the service never sees them.

Callers (the handler) hold the upload's lock around every mutating call, validate ids and offsets
before calling, and commit offsets to the database only after ``Appender.sync`` has returned them.
Implementations translate their native failures into ``StorageError``/``NotFound`` here at the
boundary.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from upload_service.errors import NotFound

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def check_upload_id(upload_id: str) -> str:
    """Ids are 32 lowercase hex digits; anything else cannot name an upload (and never a path)."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise NotFound("no such upload")
    return upload_id


@dataclass(frozen=True, slots=True)
class StorageKey:
    """Where an upload's bytes are: its id, and the backend's own reference ("" when the id is
    all a backend needs, as on a local disk)."""

    upload_id: str
    ref: str = ""


class Hasher(Protocol):
    """A running digest (hashlib objects fit). Stores feed it every written byte, in order, in the
    worker thread that writes them, never on the event loop."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class Fence(Protocol):
    """What an appender asks before every write: has the writer's lock been lost? (A
    ``locking.base.Lease`` is one.) Read from the writer's thread, so it must be a plain flag."""

    @property
    def lost(self) -> bool: ...


LOCK_LOST = "the upload's lock was lost (a newer request owns it)"  # why a fenced write fails


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

    async def settle(self) -> None:
        """Wait until every accepted byte has gone through the hashers (not necessarily durable),
        so a request's digest can be checked before anything of it is made durable. Raises
        ``StorageError`` as ``write`` does."""
        ...

    async def sync(self) -> int:
        """Make what was written durable; return the durable end offset (the durable prefix).

        The prefix may be shorter than what was written (a backend that makes bytes durable in
        whole parts); only an offset returned here may be committed to the database or reported
        to a client. Raises ``StorageError`` when bytes could not be written or made durable;
        after a write failure, calling ``sync`` again makes durable and returns the prefix that
        was written.
        """
        ...

    async def aclose(self) -> None:
        """Release resources. Bytes not covered by a ``sync`` may be lost."""
        ...


@runtime_checkable
class Checkpointer(Protocol):
    """An appender whose full ``sync`` is costly mid-request (an object store re-uploads the part
    it is building) but which can cheaply make durable some prefix of what was written (the parts
    already uploaded). The handler calls ``checkpoint`` at its checkpoints during a request and
    ``sync`` once at the end."""

    async def checkpoint(self) -> int:
        """Make durable what is cheap to; return the durable end offset, which may lag behind
        what ``sync`` would return but is committed just the same. Raises as ``sync`` does."""
        ...


class Store(Protocol):
    """The core every backend has."""

    async def create(self, upload_id: str, length: int | None = None) -> StorageKey:
        """Create empty, durable storage for a new upload; the key goes on the upload's row.
        ``length`` is the upload's final size when known (None: deferred), a hint a backend may
        size its storage by (an object store's part size). Raises ``StorageError``."""
        ...

    async def append(
        self,
        key: StorageKey,
        offset: int,
        hashers: Sequence[Hasher] = (),
        fence: Fence | None = None,
    ) -> Appender:
        """Open the upload for appending at ``offset`` (the committed offset). Bytes stored past
        ``offset`` are uncommitted leftovers of a crash or a failed request: they never become
        part of the upload (the backend drops or overwrites them). Every written byte also goes to
        each of ``hashers`` (after a write failure they are void). Once ``fence.lost`` is true,
        no further byte reaches the medium: writes (and the write a sync would do) fail with
        ``StorageError``, and ``sync`` then reports only the prefix written before. Raises
        ``NotFound`` if the upload has no storage, ``StorageError`` if it holds fewer than
        ``offset`` bytes."""
        ...

    async def size(self, key: StorageKey) -> int:
        """Bytes currently stored for the upload (used to reconcile after a crash). ``NotFound``."""
        ...

    def read(self, key: StorageKey, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` in bounded pieces. ``NotFound``/``StorageError``."""
        ...

    async def delete(self, key: StorageKey) -> None:
        """Remove the upload's bytes; removing missing bytes is not an error."""
        ...

    async def check(self) -> None:
        """Raise ``StorageError`` unless the store is reachable and writable (readiness)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Finisher(Protocol):
    async def finish(self, key: StorageKey, length: int) -> None:
        """Every byte up to ``length`` is durable and committed: turn the stored bytes into the
        finished object (an object store's CompleteMultipartUpload). Called before the upload
        leaves ``receiving``, again after a crash (so it must be idempotent). ``StorageError``."""
        ...


@runtime_checkable
class Concatenator(Protocol):
    async def concatenate(self, key: StorageKey, parts: Sequence[StorageKey]) -> int:
        """Replace the upload's bytes with the parts' bytes in order, durably, without holding
        them in memory; return the length. The caller holds the upload's lock and has checked
        that every part is complete. ``NotFound`` if a part has no storage. Without this
        capability the service does not offer the concatenation extension."""
        ...


@runtime_checkable
class TailDiscarder(Protocol):
    async def discard_tail(self, key: StorageKey, length: int) -> None:
        """Cut the stored bytes back to ``length`` (never extend them) and make that durable:
        the uncommitted tail of a crash or of a rejected checksummed request."""
        ...


@runtime_checkable
class Digester(Protocol):
    async def digest(self, key: StorageKey, hasher: Hasher) -> bytes:
        """Feed every stored byte to ``hasher`` off the event loop; return its digest. Without
        this capability the service streams the bytes through ``read``."""
        ...


@runtime_checkable
class OrphanLister(Protocol):
    async def stored_before(self, moment: datetime) -> list[StorageKey]:
        """Keys of every upload whose bytes were last changed before ``moment``: the candidates
        of the sweep for bytes that no upload row names (a crash between creating an upload's
        storage and inserting its row leaves such bytes). A key found this way may lack what only
        ``create`` knew (an S3 upload's part size), but ``delete`` removes the bytes by it."""
        ...


@runtime_checkable
class Reserver(Protocol):
    """A store that can set space aside for an upload's bytes before they arrive (a local disk's
    ``fallocate`` with ``FALLOC_FL_KEEP_SIZE``), so that an accepted upload of known length
    cannot run out of space midway. Such a store's ``create`` reserves ``length`` too, and when
    it cannot fit raises ``StorageFull`` and leaves nothing behind. A reservation never changes
    what ``size`` reports or what ``read`` returns; cutting bytes back (``append`` past
    leftovers, ``discard_tail``) may release it, so the handler reserves again before writing."""

    async def reserve(self, key: StorageKey, start: int, end: int) -> None:
        """Make sure bytes ``[start, end)`` can be written without running out of space (space
        reserved already counts). Raises ``StorageFull`` when they cannot, having reserved
        nothing more; a medium that cannot reserve at all makes this a no-op. ``NotFound``."""
        ...


@dataclass(frozen=True, slots=True)
class DirectPart:
    """A part a browser sent of a direct multipart upload; ``etag`` without its quotes."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class PostPolicy:
    """A presigned form POST: the browser posts ``fields`` then the file (field ``file``, last) to
    ``url``, which ends in ``/`` so that ``url + fields["key"]`` is the object's location."""

    url: str
    fields: dict[str, str]


@runtime_checkable
class DirectStore(Protocol):
    """An object store that lets browsers send an upload's bytes straight to the bucket: the parts
    of a multipart upload to presigned URLs, or a small file in one presigned form POST. The
    service keeps the returned key on the upload's row (as ``create``'s) and never sees the bytes.

    Such a key takes no ``append`` (``StorageError``); ``size`` is the bytes stored so far (the
    parts' sum, a POST's 0 until its object appears), ``read`` and ``digest`` read the finished
    object, ``delete`` removes whatever there is (aborting the multipart upload). Presigning does
    no I/O; nothing is checked then about the object it names. ``ValueError`` for arguments out
    of range (an expiry outside 1 s..7 days); ``StorageError`` for a key that is not of the kind
    asked for."""

    def object_key(self, key: StorageKey | str) -> str:
        """The upload's object key in the bucket (``NotFound`` for a malformed id)."""
        ...

    def multipart_id(self, key: StorageKey) -> str | None:
        """The id of the key's multipart upload, which the browser names it by; None for a
        form POST's key (or any key without one)."""
        ...

    async def begin_multipart(self, upload_id: str, content_type: str | None) -> StorageKey:
        """Start the multipart upload the browser's parts go to, at the upload's object key (with
        ``content_type`` when given; no checksums: browsers send none). ``StorageError`` when the
        object or a multipart upload at that key exists already. The caller inserts the row only
        after this returned (before, the orphan sweep may take it)."""
        ...

    async def begin_post(
        self, upload_id: str, *, max_size: int | None, content_type: str | None, expires_in: int
    ) -> tuple[StorageKey, PostPolicy]:
        """A form POST policy for exactly the upload's object key, valid ``expires_in`` seconds,
        of at most ``max_size`` bytes (None, or more than one request can hold: S3's 5 GiB, the
        most there is) and exactly ``content_type`` when given. Stores nothing.
        ``StorageError`` as ``begin_multipart``."""
        ...

    async def sign_part(self, key: StorageKey, number: int, expires_in: int) -> str:
        """A presigned URL the browser PUTs part ``number`` (1..10,000, else ``ValueError``) of
        the key's multipart upload to; its answer's ETag names the part in ``finish_multipart``."""
        ...

    async def direct_parts(self, key: StorageKey) -> list[DirectPart]:
        """The parts stored so far, by number. ``NotFound`` once the multipart upload is gone
        (finished or deleted)."""
        ...

    async def finish_multipart(self, key: StorageKey, parts: Sequence[tuple[int, str]]) -> int:
        """Complete the multipart upload from the browser's ``(number, etag)`` list; return the
        object's size. Idempotent: once completed (before a crash, say) it returns the size
        again. ``BadRequest`` when S3 refuses the list (a part missing or of another ETag, out of
        order, too small); ``NotFound`` when neither the upload nor the object exists."""
        ...

    async def finished_size(self, key: StorageKey) -> int | None:
        """The finished object's size; None while there is no object."""
        ...

    async def sign_get(
        self,
        key: StorageKey,
        expires_in: int,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A presigned URL of the finished object, served as an attachment named ``filename``
        and as ``content_type`` when given."""
        ...


@runtime_checkable
class LocalPath(Protocol):
    def path(self, key: StorageKey | str) -> Path:
        """Where the upload's bytes lie on this host's filesystem, for tools that read a file
        by its name (ffprobe). Only meaningful for a finished upload; reading is the caller's
        business (never on the event loop)."""
        ...
