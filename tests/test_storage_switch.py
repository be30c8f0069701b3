"""Switching ``UPLOAD_STORAGE`` under a database whose uploads the other store holds: the service
refuses to start with one line naming the settings (it crashed in start-up's reconciliation,
"the upload's storage is gone and cannot be recreated", a traceback of a hundred lines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio.to_thread
import pytest

from tests import s3 as moto
from tests.conftest import make_settings
from tests.tus_http_helpers import create, patch, serve
from upload_service.settings import ConfigError, Settings
from upload_service.uploads import UploadState

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parents[1]


@pytest.fixture
def data(tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    directory = tmp_path / "data"
    directory.mkdir()
    shutil.copyfile(template_db, directory / "uploads.db")
    return directory


async def _on_s3(data: Path, moto_endpoint: str) -> Settings:
    bucket = await anyio.to_thread.run_sync(moto.new_bucket, moto_endpoint)
    return make_settings(
        data, storage="s3", s3_bucket=bucket, s3_endpoint_url=moto_endpoint, s3_prefix="v/"
    )


async def _store_one(settings: Settings) -> None:
    async with serve(settings) as served:
        upload_id = await create(served.client, 100)
        assert (await patch(served.client, upload_id, 0, b"x" * 10)).status_code == 204


async def test_s3_on_a_database_of_local_uploads_refuses_to_start(
    data: Path, moto_endpoint: str
) -> None:
    await _store_one(make_settings(data))
    with pytest.raises(ConfigError) as refused:
        async with serve(await _on_s3(data, moto_endpoint)):
            pass
    assert str(refused.value) == (
        "UPLOAD_STORAGE=s3, but this database holds 1 upload stored on local storage: keep "
        "UPLOAD_STORAGE=local for this database, or start on s3 with a new database "
        "(UPLOAD_DATABASE_URL; by default the SQLite file in UPLOAD_DATA_DIR: a new data "
        "directory)"
    )


async def test_local_on_a_database_of_s3_uploads_refuses_to_start(
    data: Path, moto_endpoint: str
) -> None:
    await _store_one(await _on_s3(data, moto_endpoint))
    with pytest.raises(
        ConfigError, match=r"^UPLOAD_STORAGE=local, but this database holds 1 upload stored on s3"
    ):
        async with serve(make_settings(data)):
            pass


async def test_ended_uploads_do_not_count_and_the_same_store_starts(
    data: Path, moto_endpoint: str
) -> None:
    local = make_settings(data)
    await _store_one(local)
    async with serve(local) as served:  # the same store: starts, and the upload ends
        receiving = await served.services.repository.list_by_state(UploadState.RECEIVING)
        (upload_id,) = [upload.id for upload in receiving]
        deleted = await served.client.delete(
            f"/files/{upload_id}", headers={"Tus-Resumable": "1.0.0"}
        )
        assert deleted.status_code == 204
    async with serve(await _on_s3(data, moto_endpoint)):
        pass


async def test_serve_says_it_in_one_line_and_exits_2(data: Path) -> None:
    await _store_one(make_settings(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPLOAD_")}
    env.update(
        PYTHONPATH=str(ROOT),
        UPLOAD_DATA_DIR=str(data),
        UPLOAD_STORAGE="s3",
        UPLOAD_S3_BUCKET="uploads",
        UPLOAD_S3_ENDPOINT_URL="http://127.0.0.1:9",  # never reached
    )
    command = [sys.executable, "-m", "upload_service", "serve", "--port", "0"]
    run = partial(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    done = await anyio.to_thread.run_sync(run)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "upload-service: UPLOAD_STORAGE=s3, but this database holds 1 upload stored on local "
        "storage: keep UPLOAD_STORAGE=local for this database, or start on s3 with a new database "
        "(UPLOAD_DATABASE_URL; by default the SQLite file in UPLOAD_DATA_DIR: a new data directory)"
    ]
