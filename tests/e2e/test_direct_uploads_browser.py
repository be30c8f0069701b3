"""Direct uploads in a real browser (docs/direct-uploads.md): Uppy 6 (and Uppy 5) with
``@uppy/aws-s3``, its ``companionEndpoint`` (Uppy 5: ``endpoint``) a ticket's
``companion_endpoint``, and ``@uppy/golden-retriever``, in
headless Chromium, against a service process on ``UPLOAD_STORAGE=s3`` and the real moto server
with the bucket CORS the docs give. Three files, one above the plugin's multipart threshold (the
two small ones go by form-POST policies with Uppy 6), and the page reloaded half-way through the big one:
the big upload resumes on its multipart upload (the parts sent before are not sent again), every
upload is ``ready`` with the right sha256, the objects are byte-identical, and the service's
own access log shows that no file bytes passed through it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests import s3 as moto
from tests.e2e.support import ServerProcess, Servers, write_random_file
from tests.e2e.uppy_s3 import upload_with_reload, uppy_s3_site

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
PREFIX = "videos/"
SECRET = "a-secret-for-the-direct-upload-test-32+"
BIG = 130 * MiB + 12 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


# The npm package of an Uppy major version, its AwsS3 option for the endpoint, and whether every
# file goes by multipart. Uppy 5 waits for the ETag header of a form POST's answer, which moto's
# 204 lacks (S3 sends it), and would never finish the small files: with Uppy 5 they go by
# multipart too (one part each). Uppy 6 reads no header there.
UPPY = {"uppy 6": ("uppy", "companionEndpoint", False), "uppy 5": ("uppy5", "endpoint", True)}


@pytest.fixture(params=sorted(UPPY))
def uppy(request: pytest.FixtureRequest) -> tuple[str, str, bool]:
    return UPPY[request.param]


@pytest.fixture
def site(uppy: tuple[str, str, bool]) -> Iterator[str]:
    with uppy_s3_site(uppy[0]) as origin:
        yield origin


@pytest.fixture
def server(tmp_path: Path, moto_endpoint: str, site: str) -> Iterator[ServerProcess]:
    bucket = moto.new_bucket(moto_endpoint)
    moto.allow_browser_uploads(moto.admin(moto_endpoint), bucket, site)
    servers = Servers(tmp_path)
    try:
        yield servers.start(
            env={
                "UPLOAD_STORAGE": "s3",
                "UPLOAD_S3_BUCKET": bucket,
                "UPLOAD_S3_ENDPOINT_URL": moto_endpoint,
                "UPLOAD_S3_PREFIX": PREFIX,
                "UPLOAD_CORS_ORIGINS": site,
                "UPLOAD_AUTH_JWT_SECRET": SECRET,
                "UPLOAD_S3_DIRECT_POLL_INTERVAL": "0.2",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
            }
        )
    finally:
        servers.stop_all()


def issuer() -> dict[str, str]:
    token = jwt.encode({"sub": "app-backend", "exp": int(time.time()) + 600}, SECRET, "HS256")
    return {"Authorization": f"Bearer {token}"}


def ready(base_url: str, upload_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx.get(
            f"{base_url}/api/uploads/{upload_id}", headers=issuer()
        ).json()
        if status["state"] in ("ready", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def bytes_in(server: ServerProcess) -> list[int]:
    """The body bytes of every request the service's access log shows."""
    sizes = []
    for line in server.log_text().splitlines():
        if " bytes in " in line:
            sizes.append(int(line.split(" bytes in ", 1)[0].rsplit(" ", 1)[1]))
    return sizes


def test_uppy_sends_three_files_straight_to_the_bucket_and_resumes_after_a_reload(
    server: ServerProcess,
    site: str,
    uppy: tuple[str, str, bool],
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    files = [tmp_path / "poster.jpg", tmp_path / "intro.mp4", tmp_path / "feature.mp4"]
    for path, size in zip(files, (1 * MiB + 7, 3 * MiB, BIG), strict=True):
        write_random_file(path, size)
    big = files[2]
    issued = httpx.post(
        f"{server.base_url}/api/tickets",
        json={"uploads": 3, "metadata": {"campaign": "spring"}},
        headers=issuer(),
    )
    assert issued.status_code == 201, issued.text
    ticket = issued.json()

    run = upload_with_reload(
        site,
        ticket["companion_endpoint"],
        files,
        big=big,
        reload_after_bytes=BIG // 2,
        option=uppy[1],
        always_multipart=uppy[2],
    )

    assert run.page_errors == []
    assert run.upload_errors() == []
    successes = run.successes()
    assert sorted(successes) == sorted(path.name for path in files)
    # the big file resumed: the same multipart upload, no new one, only the missing parts
    assert run.multipart_before is not None
    assert run.multipart_restored == run.multipart_before
    multipart_id = run.multipart_before["uploadId"]
    before = set(run.part_puts(0, multipart_id))
    after = set(run.part_puts(1, multipart_id))
    parts = -(-BIG // (5 * MiB))
    assert before, "no part was sent before the reload"
    assert before.isdisjoint(after), (sorted(before), sorted(after))
    assert len(after) < parts
    # parts in flight at the reload may have reached the bucket unseen by the page: at most the
    # plugin's limit of 6 requests at once (the objects' bytes are checked below)
    assert len(set(range(1, parts + 1)) - (before | after)) <= 6
    resumed = run.companion_calls(1)
    assert ("GET", f"/s3/multipart/{multipart_id}", 200) in resumed
    assert not any(method == "POST" and path == "/s3/multipart" for method, path, _ in resumed)

    # every upload is the issuer's, made with the ticket, ready, with the right sha256
    shown = httpx.get(f"{server.base_url}/api/tickets/{ticket['id']}", headers=issuer()).json()
    assert shown["used"] == 3
    assert len(shown["upload_ids"]) == 3
    admin = moto.admin(moto_endpoint)
    bucket = server.environment["UPLOAD_S3_BUCKET"]
    for path in files:
        url = successes[path.name]
        # a multipart upload's uploadURL is the service's; a form POST's is the object's
        upload_id = url.rstrip("/").rsplit("/", 1)[1]
        assert upload_id in shown["upload_ids"]
        status = ready(server.base_url, upload_id)
        assert status["state"] == "ready", status
        assert status["sha256"] == sha256_of(path)
        assert status["direct"] is True
        assert status["ticket"] == ticket["id"]
        assert status["metadata"]["filename"] == path.name
        assert status["metadata"]["campaign"] == "spring"
        stored = admin.get_object(Bucket=bucket, Key=PREFIX + upload_id)["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == sha256_of(path)  # byte-identical
    assert successes[big.name] == f"{server.base_url}/files/{successes[big.name].rsplit('/', 1)[1]}"
    assert moto.multipart_uploads(moto_endpoint, bucket) == []

    # no file bytes passed through the service: its requests carried a few KB of JSON in all
    received = bytes_in(server)
    assert received, "the access log shows no requests"
    assert sum(received) < 64 * 1024, sorted(received)[-5:]
    assert sum(path.stat().st_size for path in files) > 130 * MiB
