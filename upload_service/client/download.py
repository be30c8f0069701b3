"""``upload-service status URL`` and ``upload-service download URL [-o FILE]``.

Both ask the JSON API (``/api/uploads/{id}``, found next to the upload URL) first, for the
upload's state, sha256 and signed download URL; without it (another path layout, an older
server) ``status`` falls back to HEAD, and ``download`` goes without the digest check.
A download goes to ``FILE.part`` and resumes with ``Range`` (and ``If-Range`` on the upload's
ETag, so a changed file is fetched whole again); the sha256 of the result is compared with the
API's before the file is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

from upload_service.client.errors import FAILED, REFUSED, ExitError, refused
from upload_service.client.progress import Display, Meter
from upload_service.client.retry import RETRYABLE, retry_after
from upload_service.client.tus import PIECE, Session, reason


@dataclass(frozen=True, slots=True)
class Info:
    """What the JSON API says of an upload (the fields the CLI uses)."""

    state: str
    offset: int
    length: int | None
    sha256: str | None
    download_url: str | None
    filename: str | None
    failure: str | None = None  # why a failed upload failed


def api_urls(url: str) -> list[str]:
    """Where the JSON API of the upload at ``url`` may be: next to the tus mount
    (``…/files/<id>`` → ``…/api/uploads/<id>``, behind a proxy prefix too), then at the root."""
    parsed = httpx.URL(url)
    segments = parsed.path.rstrip("/").split("/")
    upload_id = segments[-1]
    beside = "/".join(segments[:-2]) + f"/api/uploads/{upload_id}"
    found = [str(parsed.copy_with(path=beside, query=None))]
    root = str(parsed.copy_with(path=f"/api/uploads/{upload_id}", query=None))
    return found if root in found else [*found, root]


def api_info(session: Session, url: str) -> Info | None:
    for candidate in api_urls(url):
        response = session.request(
            "GET", candidate, session.retrying(), ok=lambda s: s < 500 and s not in RETRYABLE
        )
        if response.status_code in (401, 403):
            raise refused(response.status_code, "GET", candidate, reason(response))
        if response.status_code != 200:
            continue
        try:
            data = response.json()
        except ValueError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("state"), str):
            continue
        metadata = data.get("metadata")
        name = metadata.get("filename") if isinstance(metadata, dict) else None
        return Info(
            state=data["state"],
            offset=int(data.get("offset") or 0),
            length=data.get("length") if isinstance(data.get("length"), int) else None,
            sha256=data.get("sha256") if isinstance(data.get("sha256"), str) else None,
            download_url=(
                data.get("download_url") if isinstance(data.get("download_url"), str) else None
            ),
            filename=name if isinstance(name, str) else None,
            failure=data.get("failure") if isinstance(data.get("failure"), str) else None,
        )
    return None


def status(session: Session, url: str, out: TextIO) -> None:
    info = api_info(session, url)
    if info is None:
        head = session.status(url)
        if head is None:
            raise ExitError(f"{url}: no such upload (404/410)", REFUSED)
        complete = head.offset is not None and head.offset == head.length
        state = "complete" if complete else ("assembling" if head.offset is None else "receiving")
        info = Info(state, head.offset or 0, head.length, None, None, None)
    length = "?" if info.length is None else str(info.length)
    percent = f" ({100 * info.offset / info.length:.1f}%)" if info.length else ""
    print(f"url: {url}", file=out)
    print(f"state: {info.state}", file=out)
    print(f"offset: {info.offset} / {length}{percent}", file=out)
    if info.sha256:
        print(f"sha256: {info.sha256}", file=out)
    if info.filename:
        print(f"filename: {info.filename}", file=out)


def _target_name(info: Info | None, url: str) -> str:
    name = (info.filename if info is not None else None) or url.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[/\\\x00-\x1f]", "_", name).lstrip(".") or "download"
    return name


def download(session: Session, url: str, output: Path | None, display: Display) -> Path:
    info = api_info(session, url)
    if info is not None and info.state != "ready":
        raise ExitError(f"{url} is not ready to download (state {info.state})", REFUSED)
    target = output if output is not None else Path(_target_name(info, url))
    partial = target.with_name(target.name + ".part")
    source = info.download_url if info is not None and info.download_url else url
    expected = info.sha256 if info is not None else None
    meter = Meter(display, target.name, info.length if info is not None and info.length else 0)
    retry = session.retrying()
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {}
        if have:
            headers["Range"] = f"bytes={have}-"
            if expected:
                headers["If-Range"] = f'"sha256-{expected}"'
        try:
            with session.http.stream("GET", source, headers=headers) as response:
                if response.status_code == 416 and have:
                    break  # the partial file already holds every byte
                if response.status_code in RETRYABLE or response.status_code == 409:
                    retry.failed(f"GET {url}: {response.status_code}", retry_after(response))
                    continue
                if response.status_code not in (200, 206):
                    response.read()
                    if 400 <= response.status_code < 500:
                        raise refused(response.status_code, "GET", url, reason(response))
                    raise ExitError(f"GET {url}: unexpected {response.status_code}", FAILED)
                start = have if response.status_code == 206 else 0
                total = _total(response, start)
                if total is not None:
                    meter.total = total
                meter.update(0, start)
                with partial.open("r+b" if start else "wb") as out:
                    out.seek(start)
                    out.truncate()
                    written = start
                    for piece in response.iter_bytes(PIECE):
                        out.write(piece)
                        written += len(piece)
                        meter.update(0, written)
                        retry.progressed()
                    out.flush()
                    os.fsync(out.fileno())
                if total is None or written >= total:
                    break
                retry.failed(f"GET {url}: the body ended at {written} of {total} bytes")
        except httpx.TransportError as exc:
            retry.failed(f"GET {url}: {type(exc).__name__}: {exc}")
    meter.finish()
    if expected:
        actual = _sha256(partial)
        if actual != expected:
            partial.unlink()
            raise ExitError(f"sha256 of the download {actual} is not the upload's {expected}", 1)
    os.replace(partial, target)
    return target


def _total(response: httpx.Response, start: int) -> int | None:
    if response.status_code == 206:
        match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while piece := stream.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()
