"""The repository's Dockerfile, built and run by a real Docker engine (tests/e2e/docker.py):
the container turns healthy at whatever port it is given, runs as a user other than root, keeps
uploads in its volume, takes and returns 200 MiB from a real tus client (tuspy), and ``docker
stop`` in the middle of an upload loses nothing a new container on the same volume cannot resume.
Its ffprobe describes a real video.

Every container uses the host's network and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import jwt
import pytest
from tusclient.client import TusClient

from tests.e2e.docker import Build, Container, Docker, record
from tests.e2e.support import (
    HTTP_TIMEOUT,
    OFFSET_CT,
    TUS,
    MiB,
    RawPatch,
    Source,
    create_upload,
    download_sha256,
    free_port,
    head_offset,
    upload_id_of,
)
from tests.test_video import make_video

pytestmark = [pytest.mark.e2e, pytest.mark.solo]

SECRET = "docker-test-secret-of-at-least-32-bytes!"
TOKEN = jwt.encode({"sub": "docker-test", "exp": int(time.time()) + 7200}, SECRET, "HS256")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHUNK = 50 * MiB


def a_port_but_8080() -> int:
    """A free loopback port other than the image's default, which the health check must follow."""
    while (port := free_port()) == 8080:
        pass
    return port


def start(docker: Docker, image: Build, volume: str, port: int) -> tuple[Container, str]:
    container = docker.run(
        image.image,
        env={
            "UPLOAD_HOST": "127.0.0.1",  # the host's network: loopback only
            "UPLOAD_PORT": str(port),
            "UPLOAD_AUTH_JWT_SECRET": SECRET,
        },
        volumes={volume: "/data"},
    )
    return container, f"http://127.0.0.1:{port}"


def uid_gid(pid: int) -> tuple[set[int], set[int]]:
    """The real, effective, saved and filesystem ids of a process, as the host's kernel sees it."""
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.+)$", status, re.MULTILINE)
    gids = re.search(r"^Gid:\s+(.+)$", status, re.MULTILINE)
    assert uids is not None
    assert gids is not None
    return {int(n) for n in uids[1].split()}, {int(n) for n in gids[1].split()}


def test_the_container_turns_healthy_on_any_port_as_a_user_other_than_root(
    docker: Docker, service_image: Build, tmp_path: Path
) -> None:
    port = a_port_but_8080()
    container, base_url = start(docker, service_image, docker.volume(), port)
    seconds = container.wait_healthy()
    record("cold_start", {"seconds_to_healthy": round(seconds, 2), "health_interval": "1s"})
    print(f"image {service_image.size / 1e6:.0f} MB, healthy {seconds:.1f} s after docker run")

    config = docker.engine.inspect(service_image.image)["Config"]
    assert config["Healthcheck"]["Test"] == ["CMD", "upload-service", "healthcheck"]
    uids, gids = uid_gid(int(container.state()["Pid"]))
    assert 0 not in uids, f"the service runs as uid {uids}"
    assert 0 not in gids, f"the service runs as gid {gids}"
    (uid,) = uids
    owner = docker.engine.run("exec", container.name, "stat", "-c", "%u", "/data").stdout
    assert int(owner) == uid, "the data volume is not the service user's"

    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        assert client.get(f"{base_url}/readyz").status_code == 200
        refused = client.post(f"{base_url}/files/", headers={**TUS, "Upload-Length": "1"})
        assert refused.status_code == 401, "the image runs without authentication"

        # ffprobe in the image describes a real video (the image drops OpenGL's drivers)
        video = make_video(tmp_path / "clip.mp4")
        created = client.post(
            f"{base_url}/files/",
            headers={**TUS, **AUTH, "Upload-Length": str(len(video)), "Content-Type": OFFSET_CT},
            content=video,
        )
        assert created.status_code == 201, created.text
        status_url = f"{base_url}/api/uploads/{upload_id_of(created.headers['Location'])}"
        described = client.get(status_url, headers=AUTH).json()
        assert described["state"] == "ready"
        assert described["video"] is not None, "no video details: ffprobe failed in the image"
        assert described["video"]["video_codec"] == "mpeg4"
        assert (described["video"]["width"], described["video"]["height"]) == (160, 120)

    # what the runtime stage leaves out: the build stage's wheels and sources, pip, a compiler
    leftovers = docker.engine.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        service_image.image,
        "-c",
        "for p in /wheels /src /opt/venv/bin/pip /usr/bin/gcc; do [ -e $p ] && echo $p; done; true",
    )
    assert leftovers.stdout.split() == []


def test_an_upload_survives_docker_stop_and_resumes_in_a_new_container_on_the_volume(
    docker: Docker, service_image: Build, source: Source
) -> None:
    volume = docker.volume()
    first, base_url = start(docker, service_image, volume, a_port_but_8080())
    first.wait_healthy()
    with httpx.Client(timeout=HTTP_TIMEOUT, headers=AUTH) as http:
        # a real tus client, 200 MiB in 50 MiB chunks, returned intact
        whole = tuspy(base_url, source)
        assert download_sha256(http, whole) == (source.sha256, source.size)

        # docker stop while a PATCH is arriving: the service commits what came and answers
        url = create_upload(http, base_url, source.size)
        patch = RawPatch(url, source, 0, rate=40e6, read_answer=True, headers=AUTH)
        patch.start()
        deadline = time.monotonic() + 60
        while patch.sent < 48 * MiB and patch.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert patch.sent >= 48 * MiB, f"the PATCH sent only {patch.sent} bytes"
        stopped_in = first.stop(timeout=15)
        patch.join(timeout=30)
        state = first.state()
        assert state["ExitCode"] == 0, f"exited {state['ExitCode']} (not a graceful stop)"
        assert not state["OOMKilled"]
        assert stopped_in < 12, f"docker stop took {stopped_in:.1f} s (the grace is 10 s)"
        assert patch.status == 204, f"the interrupted PATCH got {patch.status} ({patch.error})"
        committed = patch.answered_offset
        assert committed is not None
        assert 0 < committed <= patch.sent < source.size

        # a new container on the same volume: both uploads are there, the second resumes
        second, base_url = start(docker, service_image, volume, a_port_but_8080())
        second.wait_healthy()
        url = url.replace(url.split("/files/")[0], base_url)
        whole = whole.replace(whole.split("/files/")[0], base_url)
        assert head_offset(http, url) == committed
        assert tuspy(base_url, source, url=url) == url
        assert download_sha256(http, url) == (source.sha256, source.size)
        assert download_sha256(http, whole) == (source.sha256, source.size)
    record("docker_stop", {"seconds": round(stopped_in, 2), "committed_bytes": committed})


def tuspy(base_url: str, source: Source, url: str | None = None) -> str:
    """Upload ``source`` with tuspy (a new upload, or the rest of ``url`` from the offset it asks
    the server for); returns the upload URL."""
    client = TusClient(f"{base_url}/files/", headers=AUTH)
    with source.path.open("rb") as stream:  # tuspy never closes a stream it opened itself
        uploader = client.uploader(
            file_stream=stream, url=url, chunk_size=CHUNK, metadata={"filename": "source.bin"}
        )
        uploader.upload()
    done: object = uploader.url
    assert isinstance(done, str)
    return done
