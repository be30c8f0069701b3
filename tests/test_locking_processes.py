"""The file locker across real processes, as ``serve --workers N`` uses it: mutual exclusion,
release requests from another process, and a killed holder's lock freed by the kernel."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from upload_service.errors import Locked
from upload_service.locking.file import FileLocker

pytestmark = pytest.mark.anyio

KEY = "0123456789abcdef0123456789abcdef"
GUARD = 60.0  # deadlock guard; nothing here measures time

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anyio

    from upload_service.locking.file import FileLocker


    async def main() -> None:
        locker = FileLocker(Path(sys.argv[1]), watch=0.01)
        async with locker.lock(sys.argv[2], wait=0) as lease:
            asked = anyio.Event()
            lease.on_release_request(asked.set)
            print("holding", flush=True)
            await asked.wait()
            print("asked", flush=True)
        print("released", flush=True)


    anyio.run(main)
    """
)

COUNTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anyio

    from upload_service.locking.file import FileLocker


    async def main() -> None:
        locker = FileLocker(Path(sys.argv[1]), poll=0.001)
        counter = anyio.Path(sys.argv[2])
        for _ in range(int(sys.argv[3])):
            async with locker.lock("counter", wait=60, preempt=False):
                value = int(await counter.read_text())
                await anyio.sleep(0)  # let the others run into the held lock
                await counter.write_text(str(value + 1))


    anyio.run(main)
    """
)


async def listing(directory: Path) -> list[str]:
    return [path.name async for path in anyio.Path(directory).iterdir()]


async def start_holder(directory: Path) -> tuple[Process, TextReceiveStream]:
    process = await anyio.open_process(
        [sys.executable, "-c", HOLDER, str(directory), KEY], stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    lines = TextReceiveStream(process.stdout)
    assert (await lines.receive()).split() == ["holding"]
    return process, lines


async def test_a_lock_held_by_another_process_excludes_and_yields_on_request(
    tmp_path: Path,
) -> None:
    locker = FileLocker(tmp_path)
    with anyio.fail_after(GUARD):
        process, lines = await start_holder(tmp_path)
        async with process:
            with pytest.raises(Locked):
                async with locker.lock(KEY, wait=0, preempt=False):
                    pytest.fail("entered a lock another process holds")
            with pytest.raises(Locked):
                async with locker.lock(KEY, wait=0.2, preempt=False):
                    pytest.fail("entered a lock another process holds")
            async with locker.lock(KEY, wait=GUARD, preempt=True):
                said = ""
                async for text in lines:
                    said += text
                assert said.split() == ["asked", "released"]
            assert await process.wait() == 0
    assert await listing(tmp_path) == []


async def test_a_killed_holder_leaves_its_lock_free(tmp_path: Path) -> None:
    locker = FileLocker(tmp_path)
    with anyio.fail_after(GUARD):
        process, _ = await start_holder(tmp_path)
        async with process:
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
        async with locker.lock(KEY, wait=0, preempt=False):
            pass


async def test_processes_never_hold_one_lock_together(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    locks = tmp_path / "locks"
    processes, rounds = 4, 50
    with anyio.fail_after(GUARD * 2):
        async with anyio.create_task_group() as group:
            for _ in range(processes):
                group.start_soon(
                    anyio.run_process,
                    [sys.executable, "-c", COUNTER, str(locks), str(counter), str(rounds)],
                )
    # Read, yield, write back +1: any overlap of two holders would lose an increment.
    assert int(counter.read_text()) == processes * rounds
    assert await listing(locks) == []
