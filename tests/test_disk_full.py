"""A full disk, for real: a small tmpfs holds the data directory (and the SQLite database, as in
the report, or the database lies elsewhere). A PATCH bigger than the free space is a 507 with a
one-line reason, its committed offset is what is durable, other uploads are intact, /readyz says
the disk is full, and once space is freed the upload resumes and ends with the right sha256.
With reservation, an upload that cannot fit is a 507 at creation, and a reservation keeps the
file's size. Every mount is unmounted, whatever happens."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.integrity_helpers import sha256_when_ready
from tests.tus_http_helpers import (
    count_uploads,
    create,
    head,
    patch,
    reason,
    serve,
    stored_files,
)
from upload_service.errors import StorageFull
from upload_service.settings import Settings
from upload_service.storage.local.store import LocalStore
from upload_service.storage.space import free_bytes
from upload_service.tus.commit import GIVE_BACK

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
DISK = 64 * MiB
MIN_FREE = 4 * MiB
GUARD = 120.0  # seconds; a hang is a failure
UPLOAD_ID = "0123456789abcdef0123456789abcdef"


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A private tmpfs of ``size`` bytes at ``path`` (root only). Where it cannot be mounted the
    test skips with the reason, except under CI=true, where it fails. Always unmounted."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    problem = None
    if os.geteuid() != 0 or mount is None or umount is None:
        problem = "needs root and mount(8) to build a small filesystem"
    else:
        path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            problem = f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (required under CI=true)")
        pytest.skip(problem)
    assert umount is not None
    try:
        yield path
    finally:
        done = subprocess.run([umount, str(path)], capture_output=True, check=False)
        if done.returncode != 0:  # still busy: detach it anyway, never leave a mount behind
            subprocess.run([umount, "-l", str(path)], check=True)


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _chunks(data: bytes, size: int = 256 * KiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _settings(disk: Path, database: Path, template: Path, **overrides: object) -> Settings:
    shutil.copyfile(template, database)
    values: dict[str, object] = {"min_free_bytes": MIN_FREE, "checkpoint_seconds": 3600.0}
    values.update(overrides)
    return make_settings(disk / "data", f"sqlite+aiosqlite:///{database}", **values)


async def _download(client: httpx.AsyncClient, upload_id: str) -> bytes:
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", DISK) as path:
        yield path


@pytest.mark.parametrize("database_on_disk", [True, False], ids=["db-on-disk", "db-elsewhere"])
async def test_a_patch_bigger_than_the_free_space_is_a_507_and_resumes_once_space_is_freed(
    disk: Path, tmp_path: Path, template_db: Path, database_on_disk: bool
) -> None:
    database = (disk if database_on_disk else tmp_path) / "uploads.db"
    settings = _settings(disk, database, template_db)
    other = _data(2 * MiB, seed=1)
    data = _data(32 * MiB, seed=2)
    async with serve(settings) as served:
        client = served.client
        kept = await create(client, len(other))
        assert (await patch(client, kept, 0, other)).status_code == 204
        # another upload on the same disk, half sent when the disk fills: it goes on after
        going_data = _data(3 * MiB, seed=3)
        going = await create(client, len(going_data))
        assert (await patch(client, going, 0, going_data[: MiB + 7])).status_code == 204
        # Something else fills the disk until less than the upload is left.
        filler = disk / "filler"
        await anyio.Path(filler).write_bytes(b"\0" * (48 * MiB))
        free = free_bytes(disk)
        assert free < len(data)
        # A deferred length, not declared yet: nothing can be reserved for it.
        deferred = await create(client, None)
        with anyio.fail_after(GUARD):
            failed = await patch(client, deferred, 0, _chunks(data))
        assert failed.status_code == 507, failed.text
        assert "storage is full" in reason(failed)

        answered = await head(client, deferred)
        assert answered.status_code == 200
        offset = int(answered.headers["Upload-Offset"])
        stored = await anyio.Path(settings.storage.files_dir / deferred).read_bytes()
        assert len(stored) == offset  # the committed offset is exactly what is durable
        assert stored == data[:offset]
        # What reached the disk is committed, but for what was given back to let the database
        # commit (when it shares the disk) and what the database and the lock files take.
        assert offset >= free - GIVE_BACK - MiB
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"].startswith("disk full: ")
        assert await _download(client, kept) == other  # another upload is intact

        await anyio.Path(filler).unlink()  # space is back
        assert (await client.get("/readyz")).status_code == 200
        with anyio.fail_after(GUARD):
            resumed = await patch(
                client, deferred, offset, _chunks(data[offset:]), Upload_Length=str(len(data))
            )
        assert resumed.status_code == 204, resumed.text
        assert resumed.headers["Upload-Offset"] == str(len(data))
        assert await sha256_when_ready(client, deferred, GUARD) == hashlib.sha256(data).hexdigest()
        assert await _download(client, kept) == other
        went_on = await patch(client, going, MiB + 7, going_data[MiB + 7 :])
        assert went_on.status_code == 204, went_on.text
        digest = hashlib.sha256(going_data).hexdigest()
        assert await sha256_when_ready(client, going, GUARD) == digest


async def test_reservation_refuses_what_cannot_fit_and_keeps_the_size(
    disk: Path, template_db: Path
) -> None:
    settings = _settings(disk, disk / "uploads.db", template_db)
    async with serve(settings) as served:
        client = served.client
        before = free_bytes(disk)
        too_big = await client.post("/files/", headers={**TUS, "Upload-Length": str(DISK)})
        assert too_big.status_code == 507
        assert reason(too_big).startswith("cannot create upload: storage is full")
        assert await count_uploads(served.services) == 0
        assert await stored_files(served.services) == []  # nothing left behind
        assert free_bytes(disk) >= before - 64 * KiB  # the database may take a page or two

        length = 32 * MiB
        reserved = await create(client, length)
        path = settings.storage.files_dir / reserved
        assert path.stat().st_size == 0  # the reservation keeps the size
        assert path.stat().st_blocks * 512 >= length
        assert free_bytes(disk) <= before - length
        answered = await head(client, reserved)
        assert answered.headers["Upload-Offset"] == "0"
        # What the reservation holds is not free for others: a second one does not fit.
        second = await client.post("/files/", headers={**TUS, "Upload-Length": str(length)})
        assert second.status_code == 507

        data = _data(length, seed=3)
        half = length // 2
        assert (await patch(client, reserved, 0, data[:half])).status_code == 204
        assert path.stat().st_size == half
        assert (await head(client, reserved)).headers["Upload-Offset"] == str(half)
        finished = await patch(client, reserved, half, _chunks(data[half:]))
        assert finished.status_code == 204, finished.text
        assert path.stat().st_size == length
        assert await sha256_when_ready(client, reserved, GUARD) == hashlib.sha256(data).hexdigest()
        assert await _download(client, reserved) == data


async def test_an_upload_past_its_reservation_cannot_be_starved_by_another(
    disk: Path, template_db: Path
) -> None:
    """Reserved, an upload finishes even when another one (deferred, unreserved) fills the disk
    while it is half done."""
    settings = _settings(disk, disk / "uploads.db", template_db)
    length = 20 * MiB
    data = _data(length, seed=4)
    greedy = _data(48 * MiB, seed=5)
    async with serve(settings) as served:
        client = served.client
        reserved = await create(client, length)
        assert (await patch(client, reserved, 0, data[: length // 2])).status_code == 204
        deferred = await create(client, None)
        with anyio.fail_after(GUARD):
            filled = await patch(
                client, deferred, 0, _chunks(greedy), Upload_Length=str(len(greedy))
            )
        assert filled.status_code == 507
        with anyio.fail_after(GUARD):
            finished = await patch(client, reserved, length // 2, _chunks(data[length // 2 :]))
        assert finished.status_code == 204, finished.text
        assert await sha256_when_ready(client, reserved, GUARD) == hashlib.sha256(data).hexdigest()


async def test_a_reservation_that_does_not_fit_reserves_nothing(disk: Path) -> None:
    store = LocalStore(disk / "files")
    try:
        key = await store.create(UPLOAD_ID, MiB)
        before = free_bytes(disk)
        with pytest.raises(StorageFull, match="storage is full"):
            await store.reserve(key, 0, 2 * DISK)
        assert free_bytes(disk) >= before - 64 * KiB  # nothing half-reserved stays allocated
        assert await store.size(key) == 0
        await store.delete(key)
        assert free_bytes(disk) >= before + MiB - 64 * KiB  # deleting frees the reservation
    finally:
        await store.aclose()


def test_the_small_disk_is_unmounted_after_the_test(tmp_path: Path) -> None:
    path = tmp_path / "disk"
    with small_disk(path, MiB):
        assert os.path.ismount(path)
    assert not os.path.ismount(path)
