"""Video details: what ``ffprobe`` finds in a verified upload (container, duration, codecs,
resolution, frame rate, bit rate).

``VideoProber.details`` runs just before an upload becomes ready, so ``ready`` comes with its
details (``verifying`` covers the probe too, and a download waits for both). Only uploads that
look like a video are probed: a declared ``video/*`` type, or first bytes that sniff as one.
ffprobe runs as a child process awaited on the loop (never blocking it), reading the stored file
by its path (stores with the ``LocalPath`` capability; on S3 nothing is probed), for at most
``UPLOAD_VIDEO_PROBE_TIMEOUT`` seconds and at most ``MAX_OUTPUT`` bytes of its report, then it is
killed. Whatever goes wrong (not a video after all, a timeout, ffprobe gone) leaves the upload a
valid ready upload without details, and a log line says why.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from upload_service.storage.base import LocalPath, Store
from upload_service.tus.sniff import MagicSniffer, Sniffer
from upload_service.uploads import Upload, VideoInfo

logger = logging.getLogger("upload_service.video")

MAX_OUTPUT = 1024 * 1024  # ffprobe's JSON report of a file with a few streams is a few KiB
_TYPE_KEYS = ("filetype", "contentType", "type", "mimeType")


class ProbeFailed(Exception):
    """ffprobe did not describe the file (not a video, a timeout, too much output)."""


def parse_report(report: bytes) -> VideoInfo | None:
    """The details in ffprobe's ``-print_format json -show_format -show_streams`` report; None
    when it names no video stream (an audio file, a still image's container...)."""
    try:
        parsed = json.loads(report)
    except ValueError:
        raise ProbeFailed("ffprobe's report is not JSON") from None
    if not isinstance(parsed, dict):
        raise ProbeFailed("ffprobe's report is not a JSON object")
    streams = [s for s in parsed.get("streams") or () if isinstance(s, dict)]
    fmt = parsed.get("format")
    if not isinstance(fmt, dict):
        fmt = {}
    video = next((s for s in streams if s.get("codec_type") == "video" and not _still(s)), None)
    if video is None:
        return None
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return VideoInfo(
        container=str(fmt.get("format_name") or "unknown"),
        duration=_number(fmt.get("duration")) or _number(video.get("duration")),
        video_codec=_text(video.get("codec_name")),
        audio_codec=None if audio is None else _text(audio.get("codec_name")),
        width=_integer(video.get("width")),
        height=_integer(video.get("height")),
        frame_rate=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
        bit_rate=_integer(fmt.get("bit_rate")),
    )


def _still(stream: dict[str, object]) -> bool:
    # cover art inside an audio file is a "video" stream of one picture
    disposition = stream.get("disposition")
    return isinstance(disposition, dict) and disposition.get("attached_pic") == 1


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number != float("inf") else None


def _integer(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _rate(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        rate = Fraction(value)
    except (ValueError, ZeroDivisionError):
        return None
    return round(float(rate), 3) if rate > 0 else None


def declares_video(upload: Upload) -> bool:
    for key in _TYPE_KEYS:
        raw = upload.metadata.get(key)
        if raw:
            return raw.decode("utf-8", errors="replace").strip().lower().startswith("video/")
    return False


class VideoProber:
    def __init__(self, ffprobe: str, timeout: float, sniffer: Sniffer | None = None) -> None:
        self._ffprobe = ffprobe  # a resolved path
        self._timeout = timeout
        self._sniffer = sniffer or MagicSniffer()

    async def details(self, store: Store, upload: Upload) -> VideoInfo | None:
        """The upload's video details, or None (not a video, not probed, the probe failed)."""
        if not isinstance(store, LocalPath) or not await self._looks_like_video(store, upload):
            return None
        try:
            found = await self.probe(store.path(upload.storage))
        except ProbeFailed as exc:
            logger.info("no video details: %s", exc, extra={"upload_id": upload.id})
            return None
        if found is None:
            logger.info("no video details: no video stream", extra={"upload_id": upload.id})
        return found

    async def _looks_like_video(self, store: Store, upload: Upload) -> bool:
        if declares_video(upload):
            return True
        head = b""
        async for piece in store.read(
            upload.storage, 0, min(self._sniffer.head_size, upload.offset)
        ):
            head += piece
        types = await anyio.to_thread.run_sync(self._sniffer.sniff, head)
        return any(media_type.startswith("video/") for media_type in types)

    async def probe(self, path: Path) -> VideoInfo | None:
        command = [
            self._ffprobe,
            *("-v", "error", "-print_format", "json", "-show_format", "-show_streams"),
            "--",
            str(path),
        ]
        try:
            process = await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError as exc:
            raise ProbeFailed(f"ffprobe could not start: {exc.strerror or exc}") from None
        try:
            with anyio.fail_after(self._timeout):
                report = await _read_capped(process)
                code = await process.wait()
        except TimeoutError:
            raise ProbeFailed(f"ffprobe took longer than {self._timeout:g} s") from None
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.aclose()  # reaped, its pipes closed
        if code != 0:
            raise ProbeFailed(f"ffprobe exited with {code} (not a file it can read)")
        return await anyio.to_thread.run_sync(parse_report, report)


async def _read_capped(process: anyio.abc.Process) -> bytes:
    assert process.stdout is not None
    report = bytearray()
    async for chunk in process.stdout:
        report += chunk
        if len(report) > MAX_OUTPUT:
            raise ProbeFailed(f"ffprobe's report is longer than {MAX_OUTPUT} bytes")
    return bytes(report)


async def build_prober(enabled: bool, ffprobe: str, probe_timeout: float) -> VideoProber | None:
    """The prober, or None (with a log line why) when it is off or ffprobe is not installed."""
    if not enabled:
        return None
    found = await anyio.to_thread.run_sync(shutil.which, ffprobe)  # stats PATH's directories
    if found is None:
        logger.info("ffprobe (%s) not found: uploads get no video details", ffprobe)
        return None
    return VideoProber(found, probe_timeout)
