"""tus requests over a sync httpx client, each retried as the protocol allows.

``Session.send`` drives one upload (or one part) to its length: PATCH a chunk streamed from disk
at the server's offset; after any failure (a network error, 409, 423, 460, 503 or another 5xx) read
the offset again with HEAD and go on from there. Only failures in a row that moved the offset
nowhere count towards giving up.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from upload_service.client.errors import FAILED, ExitError, refused
from upload_service.client.retry import RETRYABLE, Note, Retrying, RetryPolicy, Stopped, retry_after

TUS_VERSION = "1.0.0"
OFFSET_CT = "application/offset+octet-stream"
PIECE = 1024 * 1024  # bytes read from disk per piece of a request body (the memory bound)
# Preference of ``--checksum auto`` among what the server offers.
CHECKSUM_PREFERENCE = ("sha256", "sha1", "md5", "sha512", "crc32")


@dataclass(frozen=True, slots=True)
class Capabilities:
    extensions: frozenset[str]
    checksums: tuple[str, ...]
    max_size: int | None


@dataclass(frozen=True, slots=True)
class Status:
    offset: int | None  # None: a final upload still being assembled
    length: int | None


def reason(response: httpx.Response) -> str:
    text = response.text.strip().splitlines()
    return text[0][:300] if text else response.reason_phrase


def _crc32(data: Path, start: int, end: int) -> bytes:
    value = 0
    for piece in read_range(data, start, end):
        value = zlib.crc32(piece, value)
    return value.to_bytes(4, "big")


def digest_range(algorithm: str, path: Path, start: int, end: int) -> str:
    """base64 of ``algorithm`` over bytes ``start``..``end`` of the file (read in pieces)."""
    if algorithm == "crc32":
        raw = _crc32(path, start, end)
    else:
        hasher = hashlib.new(algorithm)
        for piece in read_range(path, start, end):
            hasher.update(piece)
        raw = hasher.digest()
    return base64.b64encode(raw).decode("ascii")


def read_range(path: Path, start: int, end: int) -> Iterator[bytes]:
    with path.open("rb") as stream:
        stream.seek(start)
        left = end - start
        while left > 0:
            piece = stream.read(min(PIECE, left))
            if not piece:
                raise ExitError(f"{path} is shorter than it was ({start + end - left} bytes)", 1)
            left -= len(piece)
            yield piece


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode('ascii')}" if value else key
        for key, value in metadata.items()
    )


class Session:
    """The endpoint, its token and the retry policy; thread-safe (``--parallel`` shares it)."""

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None,
        policy: RetryPolicy,
        note: Note,
        stop: threading.Event,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
    ) -> None:
        headers = {"Tus-Resumable": TUS_VERSION, "User-Agent": "upload-service-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.endpoint = endpoint
        self.policy = policy
        self.note = note
        self.stop = stop
        self.http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def retrying(self) -> Retrying:
        return Retrying(self.policy, self.stop, self.note)

    def request(
        self, method: str, url: str, retry: Retrying, *, ok: Callable[[int], bool], **kw: object
    ) -> httpx.Response:
        """A request retried on network errors and retryable statuses; any other answer that is
        not ``ok`` ends the command (``refused``: exit 3 or 4; other statuses: exit 1)."""
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                response = self.http.request(method, url, **kw)  # type: ignore[arg-type]
            except httpx.TransportError as exc:
                retry.failed(f"{method} {url}: {type(exc).__name__}: {exc}")
                continue
            if ok(response.status_code):
                return response
            if response.status_code in RETRYABLE:
                retry.failed(
                    f"{method} {url}: {response.status_code} {reason(response)}",
                    retry_after(response),
                )
                continue
            if 400 <= response.status_code < 500:
                raise refused(response.status_code, method, url, reason(response))
            raise ExitError(f"{method} {url}: unexpected {response.status_code}", FAILED)

    def capabilities(self) -> Capabilities:
        response = self.request("OPTIONS", self.endpoint, self.retrying(), ok=_success)
        extensions = frozenset(
            name.strip() for name in response.headers.get("Tus-Extension", "").split(",")
        )
        checksums = tuple(
            name.strip().lower()
            for name in response.headers.get("Tus-Checksum-Algorithm", "").split(",")
            if name.strip()
        )
        size = response.headers.get("Tus-Max-Size", "")
        return Capabilities(extensions - {""}, checksums, int(size) if size.isdigit() else None)

    def create(self, length: int, metadata: Mapping[str, str], *, concat: str | None = None) -> str:
        headers = {}
        if concat is None or concat == "partial":
            headers["Upload-Length"] = str(length)
        if concat is not None:
            headers["Upload-Concat"] = concat
        if metadata:
            headers["Upload-Metadata"] = encode_metadata(metadata)
        response = self.request(
            "POST", self.endpoint, self.retrying(), ok=lambda s: s == 201, headers=headers
        )
        location = response.headers.get("Location")
        if not location:
            raise ExitError(f"POST {self.endpoint}: 201 without a Location", FAILED)
        return str(httpx.URL(self.endpoint).join(location))

    def status(self, url: str, retry: Retrying | None = None) -> Status | None:
        """HEAD: the upload's offset and length; None when it is gone (404, 410)."""
        response = self.request(
            "HEAD", url, retry or self.retrying(), ok=lambda s: s in (200, 204, 404, 410)
        )
        if response.status_code in (404, 410):
            return None
        offset, length = (
            response.headers.get("Upload-Offset"),
            response.headers.get("Upload-Length"),
        )
        return Status(
            int(offset) if offset is not None and offset.isdigit() else None,
            int(length) if length is not None and length.isdigit() else None,
        )

    def send(
        self,
        url: str,
        path: Path,
        *,
        start: int,
        length: int,
        chunk: int,
        checksum: str | None,
        progress: Callable[[int], None],
    ) -> None:
        """Send bytes ``start``..``start + length`` of ``path`` to the upload at ``url`` (its
        offset 0 is the file's byte ``start``) until the server has them all."""
        retry = self.retrying()
        offset = self._offset(url, retry)
        while offset < length:
            progress(offset)
            end = min(offset + chunk, length)
            headers = {
                "Upload-Offset": str(offset),
                "Content-Type": OFFSET_CT,
                "Content-Length": str(end - offset),
            }
            if checksum is not None:
                digest = digest_range(checksum, path, start + offset, start + end)
                headers["Upload-Checksum"] = f"{checksum} {digest}"
            body = self._body(path, start + offset, start + end, offset, progress)
            try:
                response = self.http.patch(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                what = f"PATCH {url} at {offset}: {type(exc).__name__}: {exc}"
                offset = self._after_failure(url, retry, offset, what)
                continue
            if response.status_code == 204:
                new = response.headers.get("Upload-Offset", "")
                if not new.isdigit():
                    raise ExitError(f"PATCH {url}: 204 without Upload-Offset", FAILED)
                if int(new) > offset:
                    retry.progressed()
                    offset = int(new)
                else:
                    offset = self._after_failure(url, retry, offset, f"PATCH {url}: no progress")
                continue
            if response.status_code in (409, 460) or response.status_code in RETRYABLE:
                what = f"PATCH {url} at {offset}: {response.status_code} {reason(response)}"
                wait = retry_after(response) if response.status_code != 409 else 0.0
                offset = self._after_failure(url, retry, offset, what, wait)
                continue
            if 400 <= response.status_code < 500:
                raise refused(response.status_code, "PATCH", url, reason(response))
            raise ExitError(f"PATCH {url}: unexpected {response.status_code}", FAILED)
        progress(length)

    def _offset(self, url: str, retry: Retrying) -> int:
        status = self.status(url, retry)
        if status is None or status.offset is None:
            raise ExitError(f"HEAD {url}: the upload is gone", FAILED)
        return status.offset

    def _after_failure(
        self, url: str, retry: Retrying, offset: int, what: str, wait: float | None = None
    ) -> int:
        """Read the offset again after a failed PATCH (a broken request may have committed
        some of its bytes); a failure that moved it nowhere counts towards giving up."""
        current = self._offset(url, retry)
        if current > offset:
            retry.progressed()
            self.note(f"{what}; resuming at {current}")
            return current
        retry.failed(what, wait)
        return self._offset(url, retry)

    def _body(
        self, path: Path, start: int, end: int, offset: int, progress: Callable[[int], None]
    ) -> Iterator[bytes]:
        sent = offset
        for piece in read_range(path, start, end):
            if self.stop.is_set():
                raise Stopped()
            yield piece
            sent += len(piece)
            progress(sent)


def _success(status: int) -> bool:
    return 200 <= status < 300
