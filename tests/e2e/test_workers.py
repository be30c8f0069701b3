"""``upload-service serve --workers 2``: two processes on one data directory and database.

Every request here opens its own connection, so the kernel spreads them over both workers. Uploads
in chunks hop between processes and still assemble byte for byte; PATCHes that race for one upload
from different processes never interleave their bytes, because the lock is shared by the processes.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import (
    HTTP_TIMEOUT,
    OFFSET_CT,
    TUS,
    MiB,
    Servers,
    create_upload,
    download_sha256,
    head_offset,
    serve_command,
    stored_file,
    upload_id_of,
    wait_until_ready,
)

pytestmark = pytest.mark.e2e

WORKERS = 2
ROUNDS = 10  # each round is a fresh race; unlocked workers corrupt some of them, not all


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command in parentheses may hold spaces; the parent PID follows the state.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def patch_once(url: str, offset: int, body: bytes) -> httpx.Response:
    """One PATCH on a connection of its own (so it may land on either worker)."""
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT}
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        return client.patch(url, headers=headers, content=body)


def upload_in_chunks(base_url: str, data: bytes, chunk: int) -> str:
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        url = create_upload(client, base_url, len(data))
    offset = 0
    while offset < len(data):
        response = patch_once(url, offset, data[offset : offset + chunk])
        assert response.status_code == 204, f"{response.status_code}: {response.text}"
        offset = int(response.headers["Upload-Offset"])
    return url


@pytest.fixture
def two_workers(servers: Servers) -> str:
    server = servers.start(command=[*serve_command(), "--workers", str(WORKERS)])
    workers = children_of(server.pid)
    # uvicorn's supervisor starts one process per worker (plus, on some Pythons, a helper).
    assert len(workers) >= WORKERS, f"expected {WORKERS} worker processes, found {workers}"
    return server.base_url


def test_chunked_uploads_hop_between_workers_and_assemble(
    two_workers: str, http: httpx.Client
) -> None:
    sources = [random.Random(seed).randbytes(12 * MiB + seed) for seed in range(6)]
    with ThreadPoolExecutor(len(sources)) as pool:
        urls = list(pool.map(lambda data: upload_in_chunks(two_workers, data, 2 * MiB), sources))
    for url, data in zip(urls, sources, strict=True):
        wait_until_ready(http, url)
        assert download_sha256(http, url) == (sha256(data), len(data))


def test_racing_patches_from_both_workers_never_interleave(
    two_workers: str, http: httpx.Client, servers: Servers
) -> None:
    data_dir = servers.started[0].data_dir
    size = 4 * MiB
    for round_number in range(ROUNDS):
        url = create_upload(http, two_workers, size)
        bodies = [random.Random(round_number * 100 + racer).randbytes(size) for racer in range(8)]
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(partial(patch_once, url, 0), bodies))
        statuses = sorted(response.status_code for response in responses)
        assert set(statuses) <= {204, 409, 423}, statuses
        assert 204 in statuses or 423 in statuses, statuses

        offset = head_offset(http, url)
        stored = stored_file(data_dir, upload_id_of(url)).read_bytes()
        assert len(stored) >= offset
        # Every committed byte came from one racer: the first to hold the upload at offset 0.
        writers = [body for body in bodies if body[:offset] == stored[:offset]]
        assert offset == 0 or len(writers) == 1, f"committed bytes of {len(writers)} racers"
        if offset < size:
            finisher = writers[0] if writers else bodies[0]
            response = patch_once(url, offset, finisher[offset:])
            assert response.status_code == 204, response.text
            offset = size
        wait_until_ready(http, url)
        digest, length = download_sha256(http, url)
        assert length == size
        assert digest in {sha256(body) for body in bodies}
