"""The shared lockers across real processes, as ``serve --workers N`` (file) and replicas
(PostgreSQL) use them: mutual exclusion, release requests from another process, and a killed
holder's lock freed by the kernel (file) or by the server seeing its socket close (PostgreSQL)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from tests.test_contract_locker import postgres_dsn
from upload_service.errors import Locked
from upload_service.locking.base import Locker
from upload_service.locking.file import FileLocker
from upload_service.locking.postgres import PostgresLocker

pytestmark = pytest.mark.anyio

KEY = "0123456789abcdef0123456789abcdef"
GUARD = 60.0  # deadlock guard; nothing here measures time

# Builds the locker a subprocess uses from its first argument: a directory, or a PostgreSQL DSN
# followed by ``#`` and a namespace. A killed holder's PostgreSQL session would outlive it by
# dead_after only if its socket stayed open: 60 s puts that beyond every wait below.
MAKE_LOCKER = """
from pathlib import Path

from upload_service.locking.file import FileLocker
from upload_service.locking.postgres import PostgresLocker


def make_locker(spec, poll):
    if spec.startswith("postgresql://"):
        dsn, _, namespace = spec.partition("#")
        return PostgresLocker(dsn, namespace=namespace, poll=poll, heartbeat=0.05, dead_after=60)
    return FileLocker(Path(spec), poll=poll, watch=0.01)
"""

HOLDER = MAKE_LOCKER + textwrap.dedent(
    """
    import sys

    import anyio


    async def main() -> None:
        locker = make_locker(sys.argv[1], 0.01)
        async with locker.lock(sys.argv[2], wait=0) as lease:
            asked = anyio.Event()
            lease.on_release_request(asked.set)
            print("holding", flush=True)
            await asked.wait()
            print("asked", flush=True)
        print("released", flush=True)
        await locker.aclose()


    anyio.run(main)
    """
)

COUNTER = MAKE_LOCKER + textwrap.dedent(
    """
    import sys

    import anyio


    async def main() -> None:
        locker = make_locker(sys.argv[1], 0.001)
        counter = anyio.Path(sys.argv[2])
        for _ in range(int(sys.argv[3])):
            async with locker.lock("counter", wait=60, preempt=False):
                value = int(await counter.read_text())
                await anyio.sleep(0)  # let the others run into the held lock
                await counter.write_text(str(value + 1))
        await locker.aclose()


    anyio.run(main)
    """
)


async def listing(directory: Path) -> list[str]:
    return [path.name async for path in anyio.Path(directory).iterdir()]


class Setup:
    """One locker kind: the spec its subprocesses build theirs from, and the test's own locker."""

    def __init__(self, kind: str, spec: str, locker: Locker, files: Path | None) -> None:
        self.kind = kind
        self.spec = spec
        self.locker = locker
        self.files = files  # the file locker's directory, checked for leftovers

    async def leftovers(self) -> list[str]:
        return [] if self.files is None else await listing(self.files)


@pytest.fixture(params=["file", "postgres"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    locks = tmp_path / "locks"
    if request.param == "file":
        result = Setup("file", str(locks), FileLocker(locks), locks)
    else:
        dsn = await postgres_dsn()
        namespace = f"test_{uuid.uuid4().hex[:12]}"
        locker = PostgresLocker(dsn, namespace=namespace, poll=0.01, heartbeat=0.05)
        result = Setup("postgres", f"{dsn}#{namespace}", locker, None)
    try:
        yield result
    finally:
        await result.locker.aclose()


async def start_holder(spec: str) -> tuple[Process, TextReceiveStream]:
    process = await anyio.open_process(
        [sys.executable, "-c", HOLDER, spec, KEY], stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    lines = TextReceiveStream(process.stdout)
    assert (await lines.receive()).split() == ["holding"]
    return process, lines


async def test_a_lock_held_by_another_process_excludes_and_yields_on_request(
    setup: Setup,
) -> None:
    locker = setup.locker
    with anyio.fail_after(GUARD):
        process, lines = await start_holder(setup.spec)
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
    assert await setup.leftovers() == []


async def test_a_killed_holder_leaves_its_lock_free(setup: Setup) -> None:
    # The kernel frees a flock as the process dies; PostgreSQL ends the session as soon as it
    # reads the closed socket, a moment later: hence a wait, far below the holder's dead_after.
    wait = 0 if setup.kind == "file" else GUARD / 2
    with anyio.fail_after(GUARD):
        process, _ = await start_holder(setup.spec)
        async with process:
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
        async with setup.locker.lock(KEY, wait=wait, preempt=False):
            pass


async def test_processes_never_hold_one_lock_together(setup: Setup, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    processes, rounds = 4, 50
    with anyio.fail_after(GUARD * 2):
        async with anyio.create_task_group() as group:
            for _ in range(processes):
                group.start_soon(
                    anyio.run_process,
                    [sys.executable, "-c", COUNTER, setup.spec, str(counter), str(rounds)],
                )
    # Read, yield, write back +1: any overlap of two holders would lose an increment.
    assert int(counter.read_text()) == processes * rounds
    assert await setup.leftovers() == []
