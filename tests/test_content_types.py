"""The allowed-types list, its matching, the declared type, the sniffer and the head reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.file_samples import PNG, VIDEOS
from upload_service.errors import ClientGone, UnsupportedMediaType
from upload_service.settings import ConfigError, load_settings
from upload_service.tus.content_types import AllowedTypes, ContentRules, parse_allowed_types
from upload_service.tus.sniff import HeadReader, MagicSniffer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("video/mp4", ("video/mp4",)),
        (" Video/MP4 , video/* ,video/mp4", ("video/mp4", "video/*")),
        ("*/*", ("*/*",)),
        (
            "application/vnd.apple.mpegurl,audio/x-m4a",
            ("application/vnd.apple.mpegurl", "audio/x-m4a"),
        ),
    ],
)
def test_the_allowed_list_is_parsed(text: str, expected: tuple[str, ...]) -> None:
    assert parse_allowed_types(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("video", "'video' is not a media type"),
        ("video/", "'video/' is not a media type"),
        ("*/mp4", "'*/mp4' is not a media type"),
        ("video/mp4/x", "'video/mp4/x' is not a media type"),
        ("vid eo/mp4", "'vid eo/mp4' is not a media type"),
        ("video/mp4; codecs=x", "'video/mp4; codecs=x' is not a media type"),
        ("video/mp4,,video/webm", "has an empty entry"),
        ("video/mp4,", "has an empty entry"),
    ],
)
def test_a_malformed_list_is_a_config_error_naming_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setenv("UPLOAD_ALLOWED_TYPES", text)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "UPLOAD_ALLOWED_TYPES: " in str(caught.value)
    assert message in str(caught.value)


def test_the_setting_reads_a_list(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_ALLOWED_TYPES", "video/*,image/PNG")
    assert load_settings().limits.allowed_types == ("video/*", "image/png")
    monkeypatch.delenv("UPLOAD_ALLOWED_TYPES")
    assert load_settings().limits.allowed_types == ()


def test_settings_take_a_string_or_a_tuple(tmp_path: Path) -> None:
    assert make_settings(tmp_path, allowed_types="video/*").limits.allowed_types == ("video/*",)
    assert make_settings(tmp_path, allowed_types=("VIDEO/MP4",)).limits.allowed_types == (
        "video/mp4",
    )


@pytest.mark.parametrize(
    ("patterns", "value", "allowed"),
    [
        ((), "anything at all", True),
        (("video/*",), "video/mp4", True),
        (("video/*",), "Video/MP4; codecs=avc1", True),
        (("video/*",), "video", False),
        (("video/*",), "video/", False),
        (("video/*",), "videox/mp4", False),
        (("video/*",), "audio/mp4", False),
        (("video/mp4",), "video/webm", False),
        (("video/mp4", "image/png"), "IMAGE/png", True),
        (("*/*",), "application/x-anything", True),
        (("*/*",), "not a type", False),
    ],
)
def test_matching(patterns: tuple[str, ...], value: str, allowed: bool) -> None:
    assert AllowedTypes(patterns).allows(value) is allowed


@pytest.mark.parametrize(("kind", "data"), list(VIDEOS.items()))
def test_video_containers_are_recognised(kind: str, data: bytes) -> None:
    assert kind in MagicSniffer().sniff(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", ()), (b"hello world\n" * 20, ()), (PNG, ("image/png",))],
)
def test_other_bytes(data: bytes, expected: tuple[str, ...]) -> None:
    assert MagicSniffer().sniff(data) == expected


def test_footer_signatures_do_not_count_on_a_prefix() -> None:
    # a prefix that happens to end like some file's footer says nothing about the file
    sniffer = MagicSniffer()
    for data in (
        b"\x00" * 100 + b"TRUEVISION-XFILE.\x00",  # a Targa footer
        b"x" * 100 + b"\x00\x00\x01\xb7",  # an MPEG video footer: would pass video/*
        b"xx<script>alert(1)</script></svg>\n",  # an SVG footer
    ):
        assert sniffer.sniff(data) == ()


async def test_the_declared_type_is_checked_under_every_key() -> None:
    rules = ContentRules(AllowedTypes(("video/*",)), MagicSniffer())
    rules.check_declared({"filetype": b"video/mp4", "name": b"x.mp4"})
    rules.check_declared({"filetype": b"", "type": None})  # nothing declared: the bytes decide
    rules.check_declared({})
    for key in ("filetype", "mimetype", "mimeType", "contentType", "type"):
        with pytest.raises(UnsupportedMediaType) as caught:
            rules.check_declared({"filetype": b"video/webm", key: b"text/html"})
        assert caught.value.message == (
            f"Upload-Metadata {key} 'text/html' is not an allowed type (allowed: video/*)"
        )


async def body_of(*pieces: bytes | Exception) -> AsyncIterator[bytes]:
    for piece in pieces:
        if isinstance(piece, Exception):
            raise piece
        yield piece


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])


async def test_the_head_reader_replays_what_it_read() -> None:
    reader = HeadReader(body_of(b"ab", b"cd", b"ef", b"gh"), 3)
    await reader.read()
    assert reader.head == b"abcd"  # whole chunks: at most one chunk past the size
    assert not reader.ended
    assert await collect(reader.rest()) == b"abcdefgh"


async def test_the_head_reader_on_a_short_body() -> None:
    reader = HeadReader(body_of(b"ab"), 10)
    await reader.read()
    assert (reader.head, reader.ended, reader.received) == (b"ab", True, 2)
    assert await collect(reader.rest()) == b"ab"


async def test_a_client_gone_during_the_head_is_raised_after_it() -> None:
    reader = HeadReader(body_of(b"ab", ClientGone()), 10)
    await reader.read()
    assert reader.head == b"ab"
    seen: list[bytes] = []

    async def drain() -> None:
        async for chunk in reader.rest():
            seen.append(chunk)

    with pytest.raises(ClientGone):
        await drain()
    assert seen == [b"ab"]
