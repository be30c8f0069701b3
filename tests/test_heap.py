"""Start-up leaves no full garbage collection to the event loop (``upload_service.ops.heap``)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.tus_http_helpers import serve
from upload_service.ops.heap import StartUpHeap


async def test_start_up_collects_off_the_loop_and_freezes_what_survives(
    data_dir: Path, database_url: str
) -> None:
    assert gc.isenabled()
    async with serve(make_settings(data_dir, database_url), settle_heap=True):
        assert gc.isenabled(), "automatic collection is back on once the app serves"
        assert gc.get_freeze_count() > 0, "start-up's survivors are frozen"
    assert gc.get_freeze_count() == 0, "unfrozen at shutdown"
    assert gc.isenabled()


async def test_collection_stays_off_until_start_up_settles_and_comes_back_on_failure() -> None:
    with StartUpHeap() as heap:
        assert not gc.isenabled()
        await heap.settle()
        assert gc.isenabled()
    seen: list[bool] = []

    def fail_start_up() -> None:
        with StartUpHeap():
            seen.append(gc.isenabled())
            raise RuntimeError("start-up failed")

    with pytest.raises(RuntimeError, match="start-up failed"):
        fail_start_up()
    assert seen == [False]
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


async def test_a_process_of_many_apps_leaves_the_heap_alone(
    data_dir: Path, database_url: str
) -> None:
    assert gc.isenabled()
    seen: list[bool] = []
    with StartUpHeap(enabled=False) as heap:
        seen.append(gc.isenabled())
        await heap.settle()
    assert seen == [True]
    async with serve(make_settings(data_dir, database_url), settle_heap=False):
        assert gc.isenabled()
        assert gc.get_freeze_count() == 0, "nothing frozen"
    assert gc.isenabled()
