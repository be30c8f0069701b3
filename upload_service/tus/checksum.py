"""The tus ``checksum`` extension's algorithms and its ``Upload-Checksum`` header.

Hashers are updated in the worker thread that writes the same bytes (hashlib releases the GIL on
large buffers), so checksums never run on the event loop and never need the body in memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from upload_service.errors import BadRequest, ServiceError
from upload_service.storage.base import Hasher


class Crc32:
    """CRC-32 (zlib/IEEE), digest as 4 big-endian bytes."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "md5": hashlib.md5,
    "crc32": Crc32,
}


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes

    def hasher(self) -> Hasher:
        return ALGORITHMS[self.algorithm]()


def parse_checksum(header: str) -> Checksum:
    """Parse ``Upload-Checksum: <algorithm> <base64 digest>``; anything malformed is a 400."""
    parts = header.strip().split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in ALGORITHMS:
        supported = ",".join(ALGORITHMS)
        raise BadRequest(f"checksum algorithm {algorithm[:20]!r} is not supported ({supported})")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("Upload-Checksum digest is not valid base64") from exc
    expected = len(ALGORITHMS[algorithm]().digest())
    if len(digest) != expected:
        raise BadRequest(f"a {algorithm} digest has {expected} bytes, got {len(digest)}")
    return Checksum(algorithm, digest)


class ChecksumMismatch(ServiceError):
    status = 460
    code = "checksum_mismatch"


class RunningDigests:
    """The sha256 of each upload's bytes so far, while this process has seen all of them in order
    (a bounded LRU of small hash states). A miss only means reading the file back at the end."""

    def __init__(self, limit: int = 4096) -> None:
        self._items: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        self._limit = limit

    def take(self, upload_id: str, offset: int) -> Hasher | None:
        entry = self._items.pop(upload_id, None)
        if offset == 0:
            return hashlib.sha256()
        if entry is not None and entry[0] == offset:
            return entry[1]
        return None

    def put(self, upload_id: str, offset: int, hasher: Hasher) -> None:
        self._items[upload_id] = (offset, hasher)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._items.pop(upload_id, None)
