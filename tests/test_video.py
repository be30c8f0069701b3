"""Video details: a real small video made by ffmpeg gets its container, duration, codecs,
resolution and frame rate on ``GET /api/uploads/{id}`` once ready; a file that is not a video, a
probe that times out, ffprobe missing or turned off all leave a valid ready upload without them."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.e2e.support import require_tool
from tests.tus_http_helpers import OFFSET_CT, serve
from upload_service.video import ProbeFailed, parse_report

pytestmark = pytest.mark.anyio


def make_video(path: Path) -> bytes:
    ffmpeg = require_tool("ffmpeg")
    subprocess.run(
        [
            ffmpeg,
            *("-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=duration=2:size=160x120:rate=10"),
            *("-f", "lavfi", "-i", "sine=frequency=440:duration=2"),
            *("-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4")


async def upload(
    client: httpx.AsyncClient, data: bytes, filetype: str | None = None
) -> dict[str, object]:
    headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OFFSET_CT}
    if filetype is not None:
        headers["Upload-Metadata"] = "filetype " + base64.b64encode(filetype.encode()).decode()
    created = await client.post("/files/", headers=headers, content=data)
    assert created.status_code == 201, created.text
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    body: dict[str, object] = (await client.get(f"/api/uploads/{upload_id}")).json()
    assert body["state"] == "ready"  # the details come with ready, not after it
    return body


async def test_a_real_video_gets_its_details(
    data_dir: Path, database_url: str, video: bytes
) -> None:
    require_tool("ffprobe")
    async with serve(make_settings(data_dir, database_url)) as served:
        for filetype in (None, "video/mp4"):  # found by its first bytes, or by its type
            details = (await upload(served.client, video, filetype))["video"]
            assert isinstance(details, dict)
            assert "mp4" in details["container"]
            assert details["video_codec"] == "mpeg4"
            assert details["audio_codec"] == "aac"
            assert (details["width"], details["height"]) == (160, 120)
            assert details["frame_rate"] == 10.0
            assert 1.5 < details["duration"] < 2.5
            assert details["bit_rate"] > 0
        listed = (await served.client.get("/api/uploads")).json()["uploads"]
        assert [item["video"]["width"] for item in listed] == [160, 160]


async def test_a_file_that_is_not_a_video_is_still_a_ready_upload(
    data_dir: Path, database_url: str
) -> None:
    require_tool("ffprobe")
    async with serve(make_settings(data_dir, database_url)) as served:
        declared = await upload(served.client, os.urandom(5000), "video/mp4")  # probed, fails
        assert declared["video"] is None
        assert declared["sha256"] is not None
        plain = await upload(served.client, b"just some text\n")  # not even probed
        assert plain["video"] is None


def fake_ffprobe(directory: Path, script: str) -> Path:
    path = directory / "ffprobe"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_a_probe_that_takes_too_long_is_killed_and_the_upload_is_ready(
    data_dir: Path,
    database_url: str,
    video: bytes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow = fake_ffprobe(tmp_path, 'echo $$ > "$(dirname "$0")/pid"\nexec sleep 60')
    settings = make_settings(data_dir, database_url, ffprobe=str(slow), video_probe_timeout=0.5)
    caplog.set_level(logging.INFO, "upload_service.video")
    async with serve(settings) as served:
        with anyio.fail_after(20):
            body = await upload(served.client, video, "video/mp4")
    assert body["video"] is None
    assert "ffprobe took longer than 0.5 s" in caplog.text
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left running


@pytest.mark.parametrize("how", ["missing", "off", "garbage"])
async def test_no_ffprobe_or_probing_off_or_a_broken_one_gives_no_details(
    data_dir: Path, database_url: str, video: bytes, tmp_path: Path, how: str
) -> None:
    choices: dict[str, dict[str, object]] = {
        "missing": {"ffprobe": str(tmp_path / "no-such-ffprobe")},
        "off": {"video_probe": False},
        "garbage": {"ffprobe": str(fake_ffprobe(tmp_path, "echo '{not json'"))},
    }
    overrides = choices[how]
    async with serve(make_settings(data_dir, database_url, **overrides)) as served:
        body = await upload(served.client, video, "video/mp4")
    assert body["video"] is None
    assert body["sha256"] is not None


def test_parse_report_reads_ffprobes_fields() -> None:
    report = {
        "streams": [
            {"codec_type": "video", "codec_name": "mjpeg", "disposition": {"attached_pic": 1}},
            {
                "codec_type": "video",
                "codec_name": "h264",
                "width": 1920,
                "height": 1080,
                "avg_frame_rate": "30000/1001",
                "r_frame_rate": "30000/1001",
            },
            {"codec_type": "audio", "codec_name": "opus"},
        ],
        "format": {"format_name": "matroska,webm", "duration": "12.500000", "bit_rate": "800000"},
    }
    info = parse_report(json.dumps(report).encode())
    assert info is not None
    assert (info.container, info.video_codec, info.audio_codec) == ("matroska,webm", "h264", "opus")
    assert (info.width, info.height, info.frame_rate) == (1920, 1080, 29.97)
    assert (info.duration, info.bit_rate) == (12.5, 800000)
    audio_only = {"streams": [{"codec_type": "audio", "codec_name": "mp3"}], "format": {}}
    assert parse_report(json.dumps(audio_only).encode()) is None
    rate_unknown = {"streams": [{"codec_type": "video", "avg_frame_rate": "0/0"}], "format": {}}
    parsed = parse_report(json.dumps(rate_unknown).encode())
    assert parsed is not None
    assert parsed.frame_rate is None
    assert parsed.container == "unknown"
    with pytest.raises(ProbeFailed):
        parse_report(b"[1, 2]")
