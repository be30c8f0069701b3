"""``upload-service upload``, ``status`` and ``download`` against a real server on 127.0.0.1
(the app under uvicorn in a thread, behind a wrapper that records requests and injects faults)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.live_server import Fault, Live, live_server
from upload_service.auth.apikey import hash_key
from upload_service.cli import main
from upload_service.settings import Settings

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The resume store's directory ($XDG_STATE_HOME) of this test; no token from outside."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("UPLOAD_TOKEN", raising=False)
    return tmp_path / "state" / "upload-service" / "uploads.json"


def _settings(tmp_path: Path, template_db: Path, **overrides: object) -> Settings:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    shutil.copyfile(template_db, data / "uploads.db")
    return make_settings(data, None, checkpoint_seconds=0.2, **overrides)


@pytest.fixture
def live(tmp_path: Path, template_db: Path) -> Iterator[Live]:
    with live_server(_settings(tmp_path, template_db)) as server:
        yield server


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        left = size
        while left:
            piece = min(left, 4 * MiB)
            out.write(os.urandom(piece))
            left -= piece
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def api(url: str) -> dict[str, object]:
    upload_id = url.rsplit("/", 1)[-1]
    base = url.split("/files/")[0]
    deadline = time.monotonic() + 30
    while True:
        data: dict[str, object] = httpx.get(f"{base}/api/uploads/{upload_id}").json()
        if data["state"] != "verifying" or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """``upload-service ARGS`` in this process: (exit status, stdout lines, stderr)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_upload_prints_the_url_shows_progress_and_the_result_is_the_file(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "clip.mp4", 5 * MiB + 7)
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--chunk-size", "1M",
        "--progress", "lines", "--metadata", "album=summer",
    )  # fmt: skip
    assert status == 0, err
    assert len(out) == 1
    assert out[0].startswith(live.endpoint)
    assert "clip.mp4  100.0%  5.0 MiB / 5.0 MiB" in err  # bytes, rate and ETA on stderr
    assert "/s  ETA 0:00:00" in err
    info = api(out[0])
    assert info["state"] == "ready"
    assert info["sha256"] == sha256(source)
    assert info["metadata"] == {"filename": "clip.mp4", "filetype": "video/mp4", "album": "summer"}
    assert len(live.faults.requests("PATCH")) == 6  # 1 MiB chunks
    assert json.loads(state.read_text())  # the resume store names the upload


def test_running_again_after_a_finished_upload_sends_nothing(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", MiB)
    first = run(capsys, "upload", str(source), "--endpoint", live.endpoint, "--progress", "none")
    second = run(capsys, "upload", str(source), "--endpoint", live.endpoint, "--progress", "none")
    assert first[0] == second[0] == 0
    assert first[1] == second[1]
    assert len(live.faults.requests("POST")) == 1
    assert len(live.faults.requests("PATCH")) == 1


def test_a_changed_file_is_a_new_upload(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", MiB)
    first = run(capsys, "upload", str(source), "--endpoint", live.endpoint, "--progress", "none")
    random_file(source, MiB + 1)
    second = run(capsys, "upload", str(source), "--endpoint", live.endpoint, "--progress", "none")
    assert first[1] != second[1]
    assert api(second[1][0])["sha256"] == sha256(source)


def test_killed_mid_upload_it_resumes_from_the_servers_offset(
    live: Live, tmp_path: Path, state: Path
) -> None:
    source = random_file(tmp_path / "big.bin", 24 * MiB + 5)
    live.faults.body_delay = 0.01  # about 6 MB/s: slow enough to be killed midway
    command = [sys.executable, "-m", "upload_service", "upload", str(source)]
    command += ["--endpoint", live.endpoint, "--chunk-size", "4M", "--progress", "none"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        url = None
        while time.monotonic() < deadline:
            posts = live.faults.requests("PATCH")
            if len(posts) >= 3:  # two chunks committed, the third on its way
                url = posts[0].path
                break
            time.sleep(0.05)
        assert url is not None, log.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    offset = int(httpx.head(live.url + url, headers=TUS).headers["Upload-Offset"])
    assert offset >= 8 * MiB
    live.faults.body_delay = 0.0
    before = len(live.faults.seen)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == live.url + url  # the same upload, not a new one
    resumed = [seen for seen in live.faults.seen[before:] if seen.method == "PATCH"]
    # did not start over: from where the killed run's bytes end (the server may still have been
    # committing them when the HEAD above was answered)
    assert int(resumed[0].headers["upload-offset"]) >= offset
    assert not [seen for seen in live.faults.seen[before:] if seen.method == "POST"]
    assert api(live.url + url)["sha256"] == sha256(source)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("PATCH", 503, 2, {"Retry-After": "1"}),
        Fault("PATCH", 423, 2),
        Fault("PATCH", 409, 2, after=1),
        Fault("PATCH", 502, 3, after=1),
        Fault("HEAD", 503, 2, {"Retry-After": "0"}),
        Fault("POST", 503, 1, {"Retry-After": "0"}),
    ],
    ids=["503-retry-after", "423", "409", "502", "head-503", "post-503"],
)
def test_retries_transient_answers(
    live: Live,
    tmp_path: Path,
    state: Path,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
) -> None:
    source = random_file(tmp_path / "a.bin", 3 * MiB)
    live.faults.faults.append(fault)
    started = time.monotonic()
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--chunk-size", "1M",
        "--progress", "none",
    )  # fmt: skip
    assert status == 0, err
    assert fault.times == 0  # every injected failure was met, and survived
    assert f": {fault.status} " in err
    assert "; retrying in " in err
    assert api(out[0])["sha256"] == sha256(source)
    if fault.headers.get("Retry-After") == "1":
        assert time.monotonic() - started >= 2  # Retry-After was honoured, twice


def test_gives_up_after_attempts_without_progress(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", MiB)
    live.faults.faults.append(Fault("PATCH", 500, 100))
    status, _out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--retries", "3",
        "--progress", "none",
    )  # fmt: skip
    assert status == 1
    assert "giving up after 3 attempts" in err
    assert len(live.faults.requests("PATCH")) == 3


def test_refusals_and_usage_have_their_exit_codes(
    tmp_path: Path, template_db: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", MiB)
    settings = _settings(tmp_path, template_db, max_size=1000)
    with live_server(settings) as live:
        status, _, err = run(capsys, "upload", str(source), "--endpoint", live.endpoint)
        assert status == 4, err
        assert "larger than the server takes" in err
        live.faults.faults.append(Fault("POST", 415, 1))
        small = random_file(tmp_path / "b.bin", 10)
        status, _, err = run(capsys, "upload", str(small), "--endpoint", live.endpoint)
        assert status == 4
        assert "POST" in err
        assert "415" in err
    status, _, err = run(capsys, "upload", str(tmp_path / "missing"), "--endpoint", "http://x/")
    assert status == 2
    with pytest.raises(SystemExit) as usage:
        main(["upload", str(source), "--endpoint", "http://x/", "--chunk-size", "0"])
    assert usage.value.code == 2


def test_a_token_is_sent_and_a_refused_one_exits_3(
    tmp_path: Path,
    template_db: Path,
    state: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "k" * 40
    settings = _settings(
        tmp_path, template_db, auth_api_keys=f"cli:{hash_key(key)}", auth_signing_key="s" * 40
    )
    source = random_file(tmp_path / "a.bin", 2 * MiB)
    with live_server(settings) as live:
        status, _, err = run(capsys, "upload", str(source), "--endpoint", live.endpoint)
        assert status == 3
        assert "401" in err
        status, _, err = run(
            capsys, "upload", str(source), "--endpoint", live.endpoint, "--token", "wrong"
        )
        assert status == 3
        monkeypatch.setenv("UPLOAD_TOKEN", key)
        status, out, err = run(capsys, "upload", str(source), "--endpoint", live.endpoint)
        assert status == 0, err
        assert live.faults.requests("PATCH")[-1].headers["authorization"] == f"Bearer {key}"
        url = out[0]
        status, lines, err = run(capsys, "status", url)
        assert status == 0, err
        assert "offset: 2097152 / 2097152 (100.0%)" in lines
        target = tmp_path / "back.bin"
        status, _, err = run(capsys, "download", url, "-o", str(target), "--progress", "none")
        assert status == 0, err
        assert sha256(target) == sha256(source)
        monkeypatch.delenv("UPLOAD_TOKEN")
        status, _, err = run(capsys, "status", url)
        assert status == 3


def test_parallel_uses_concatenation(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", 6 * MiB + 3)
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--parallel", "3",
        "--chunk-size", "1M", "--progress", "none",
    )  # fmt: skip
    assert status == 0, err
    posts = live.faults.requests("POST")
    assert [seen.headers.get("upload-concat", "")[:7] for seen in posts] == [
        "partial", "partial", "partial", "final;h",
    ]  # fmt: skip
    info = api(out[0])
    assert info["state"] == "ready"
    assert info["sha256"] == sha256(source)
    assert info["metadata"] == {"filename": "a.bin", "filetype": "application/octet-stream"}


def test_parallel_falls_back_to_one_stream_without_concatenation(
    live: Live,
    tmp_path: Path,
    state: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from upload_service.tus import handler

    monkeypatch.setattr(handler, "CONCAT_EXTENSIONS", ())  # a store without concatenation
    source = random_file(tmp_path / "a.bin", 2 * MiB)
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--parallel", "4",
        "--progress", "none",
    )  # fmt: skip
    assert status == 0, err
    assert "does not offer concatenation: one stream" in err
    assert [seen.headers.get("upload-concat") for seen in live.faults.requests("POST")] == [None]
    assert api(out[0])["sha256"] == sha256(source)


def test_checksum_per_patch(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", 3 * MiB + 1)
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--checksum", "sha256",
        "--chunk-size", "1M", "--progress", "none",
    )  # fmt: skip
    assert status == 0, err
    patches = live.faults.requests("PATCH")
    assert len(patches) == 4
    data = source.read_bytes()
    import base64

    first = base64.b64encode(hashlib.sha256(data[:MiB]).digest()).decode()
    assert patches[0].headers["upload-checksum"] == f"sha256 {first}"
    assert all(seen.status == 204 for seen in patches)
    assert api(out[0])["sha256"] == sha256(source)
    status, _, err = run(capsys, "upload", str(source), "--endpoint", live.endpoint,
                         "--checksum", "auto")  # fmt: skip
    assert status == 0


def test_a_checksum_mismatch_is_sent_again(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", 2 * MiB)
    live.faults.faults.append(Fault("PATCH", 460, 1))
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--checksum", "crc32",
        "--chunk-size", "1M", "--progress", "none",
    )  # fmt: skip
    assert status == 0, err
    assert "460" in err
    assert api(out[0])["sha256"] == sha256(source)


def test_status_and_a_download_resumed_with_range(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "movie.mp4", 3 * MiB + 11)
    _, out, _ = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--progress", "none"
    )
    url = out[0]
    api(url)
    status, lines, err = run(capsys, "status", url)
    assert status == 0, err
    assert lines[:3] == [
        f"url: {url}",
        "state: ready",
        f"offset: {3 * MiB + 11} / {3 * MiB + 11} (100.0%)",
    ]
    assert f"sha256: {sha256(source)}" in lines
    target = tmp_path / "copy.mp4"
    partial = target.with_name("copy.mp4.part")
    partial.write_bytes(source.read_bytes()[:MiB])  # a download that broke off
    status, out, err = run(capsys, "download", url, "-o", str(target), "--progress", "none")
    assert status == 0, err
    assert out == [str(target)]
    assert sha256(target) == sha256(source)
    assert not partial.exists()
    gets = [seen for seen in live.faults.requests("GET") if seen.path.startswith("/files/")]
    assert gets[-1].headers["range"] == f"bytes={MiB}-"
    assert gets[-1].headers["if-range"] == f'"sha256-{sha256(source)}"'


def test_a_download_whose_partial_file_is_wrong_fails_the_digest(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", 2 * MiB)
    _, out, _ = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--progress", "none"
    )
    api(out[0])
    target = tmp_path / "copy.bin"
    target.with_name("copy.bin.part").write_bytes(b"\0" * 1000)  # not the file's first bytes
    status, _, err = run(capsys, "download", out[0], "-o", str(target), "--progress", "none")
    assert status == 1
    assert "sha256 of the download" in err
    assert not target.exists()


def test_status_of_an_unknown_upload_exits_4(
    live: Live, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "status", f"{live.endpoint}{'0' * 32}")
    assert status == 4, err


@pytest.fixture
def slow_assembly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Final uploads are assembled (and then verified) 1.5 s after they are created."""
    import asyncio

    from upload_service.lifecycle import Lifecycle

    assemble = Lifecycle.assemble

    async def slowly(self: Lifecycle, final_id: str) -> None:
        await asyncio.sleep(1.5)
        await assemble(self, final_id)

    monkeypatch.setattr(Lifecycle, "assemble", slowly)


def _state_now(url: str) -> object:
    upload_id = url.rsplit("/", 1)[-1]
    return httpx.get(f"{url.split('/files/')[0]}/api/uploads/{upload_id}").json()["state"]


def test_parallel_exits_once_the_final_upload_is_ready(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str], slow_assembly: None
) -> None:
    source = random_file(tmp_path / "a.bin", 3 * MiB)
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--parallel", "3",
        "--progress", "none",
    )  # fmt: skip
    assert status == 0, err
    assert _state_now(out[0]) == "ready"  # read once: the command waited for it
    assert f"{out[0]}: every byte is sent; waiting for the server (receiving)" in err


def test_parallel_gives_up_waiting_after_the_ready_timeout(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str], slow_assembly: None
) -> None:
    source = random_file(tmp_path / "a.bin", 3 * MiB)
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--parallel", "3",
        "--progress", "none", "--ready-timeout", "0.3",
    )  # fmt: skip
    assert status == 1
    assert out == []
    assert "is not ready after 0.3s (state receiving;" in err
    assert "upload-service status http://" in err
    # run again, it sends nothing and waits for the verdict this time
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--parallel", "3",
        "--progress", "none",
    )  # fmt: skip
    assert status == 0, err
    assert _state_now(out[0]) == "ready"
    assert len(live.faults.requests("POST")) == 4


def test_a_final_upload_that_fails_verification_exits_1(
    live: Live, tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = random_file(tmp_path / "a.bin", 3 * MiB)
    status, out, err = run(
        capsys, "upload", str(source), "--endpoint", live.endpoint, "--parallel", "3",
        "--progress", "none", "--metadata", f"sha256={'0' * 64}",
    )  # fmt: skip
    assert status == 1
    assert out == []
    assert "is failed: sha256 mismatch" in err
