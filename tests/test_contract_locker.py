"""One contract suite for every ``Locker``. A shared (e.g. Postgres) locker joins by adding one
parameter to the ``locker`` fixture; leak checks for a backend's internals sit at the end."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.postgres import ADMIN_DSN
from upload_service.errors import Locked, Unavailable
from upload_service.locking.base import Lease, Locker
from upload_service.locking.file import FileLocker
from upload_service.locking.memory import MemoryLocker
from upload_service.locking.postgres import PostgresLocker, asyncpg_dsn, keepalive_settings

KEY = "0123456789abcdef0123456789abcdef"
# Deadlock guard only: every wait below ends by an event, never by elapsed time, unless broken.
GUARD = 20.0


async def postgres_dsn() -> str:
    """The test cluster's DSN; skips the test when it cannot be reached (fails it under CI)."""
    dsn = ADMIN_DSN  # the suite's server (tests/postgres.py): locks need no database of their own

    try:
        connection = await asyncpg.connect(dsn, timeout=5)
        await connection.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        reason = f"PostgreSQL at {dsn} unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return dsn


def new_postgres_locker(dsn: str, **tunables: float) -> PostgresLocker:
    """A locker in a namespace of its own, so that no other test's locks can interfere."""
    namespace = f"test_{uuid.uuid4().hex[:12]}"
    settings = {"poll": 0.01, "heartbeat": 0.05, **tunables}
    return PostgresLocker(dsn, namespace=namespace, **settings)


async def _new_locker(name: str, directory: Path) -> Locker:
    if name == "memory":
        return MemoryLocker()
    if name == "file":
        return FileLocker(directory, poll=0.005, watch=0.01)
    if name == "postgres":
        return new_postgres_locker(await postgres_dsn())
    raise AssertionError(f"unknown locker {name}")


async def advisory_locks_of(locker: PostgresLocker) -> int:
    """How many advisory locks the session of ``locker`` holds, seen from another session."""
    own = locker._connection
    if own is None or own.is_closed():
        return 0
    observer = await asyncpg.connect(await postgres_dsn())
    try:
        count: int = await observer.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
            own.get_server_pid(),
        )
    finally:
        await observer.close()
    return count


@pytest.fixture(params=["memory", "file", "postgres"])
async def locker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Locker]:
    directory = tmp_path / "locks"
    instance = await _new_locker(request.param, directory)
    try:
        yield instance
        if isinstance(instance, PostgresLocker):
            assert await advisory_locks_of(instance) == 0, "an advisory lock outlived its lease"
    finally:
        await instance.aclose()
    if isinstance(instance, PostgresLocker):
        assert instance._held == {}, "a lease outlived its lock"
        assert instance._wakers == {}, "a waiter's registration outlived it"
        assert instance._local._entries == {}, "a local lock entry outlived every user"
    if isinstance(instance, MemoryLocker):
        assert instance._entries == {}, "a lock entry outlived every user of the lock"
    if isinstance(instance, FileLocker):
        assert instance._leases == {}, "a lease outlived its lock"
        left = sorted(path.name for path in directory.iterdir()) if directory.exists() else []
        assert left == [], "lock files outlived their locks"


class Holder:
    """Holds ``key`` in a task until told to let go (or until asked to, if ``yield_on_request``)."""

    def __init__(self, locker: Locker, key: str = KEY, *, yield_on_request: bool = False) -> None:
        self.locker = locker
        self.key = key
        self.yield_on_request = yield_on_request
        self.holding = anyio.Event()
        self.release = anyio.Event()
        self.released = anyio.Event()
        self.requests = 0
        self.asked = anyio.Event()
        self.lease: Lease | None = None

    def _on_request(self) -> None:
        self.requests += 1
        self.asked.set()
        if self.yield_on_request:
            self.release.set()

    async def run(self) -> None:
        async with self.locker.lock(self.key, wait=0) as lease:
            self.lease = lease
            lease.on_release_request(self._on_request)
            self.holding.set()
            await self.release.wait()
        self.released.set()


async def test_lock_is_mutually_exclusive(locker: Locker) -> None:
    inside = 0
    most = 0
    entered: list[int] = []

    async def worker(number: int) -> None:
        nonlocal inside, most
        async with locker.lock(KEY, wait=GUARD, preempt=False):
            inside += 1
            most = max(most, inside)
            entered.append(number)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            inside -= 1

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            for number in range(8):
                group.start_soon(worker, number)
    assert most == 1
    assert sorted(entered) == list(range(8))


async def test_a_waiter_enters_only_after_the_holder_leaves(locker: Locker) -> None:
    holder = Holder(locker)
    entered = anyio.Event()

    async def waiter() -> None:
        async with locker.lock(KEY, wait=GUARD, preempt=False):
            assert holder.released.is_set()
            entered.set()

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not entered.is_set()
            holder.release.set()
    assert entered.is_set()


async def test_different_keys_do_not_exclude_each_other(locker: Locker) -> None:
    holder = Holder(locker)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            async with locker.lock("f" * 32, wait=0):
                pass
            holder.release.set()


async def test_wait_zero_on_a_free_lock_succeeds(locker: Locker) -> None:
    with anyio.fail_after(GUARD):
        async with locker.lock(KEY, wait=0) as lease:
            assert isinstance(lease, Lease)
            assert not lease.release_requested
        async with locker.lock(KEY, wait=0):  # and again, once released
            pass


async def test_wait_zero_on_a_held_lock_fails_at_once_with_423(locker: Locker) -> None:
    holder = Holder(locker)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            # The holder never lets go: only failing immediately can return from here.
            with pytest.raises(Locked) as caught:
                async with locker.lock(KEY, wait=0, preempt=False):
                    pytest.fail("entered a held lock")
            assert caught.value.status == 423
            assert "in use" in caught.value.message
            holder.release.set()


async def test_waiting_gives_up_with_locked_after_wait(locker: Locker) -> None:
    holder = Holder(locker)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            with pytest.raises(Locked):
                async with locker.lock(KEY, wait=0.05, preempt=False):
                    pytest.fail("entered a held lock")
            assert not holder.released.is_set()
            holder.release.set()


async def test_waiting_succeeds_when_the_holder_leaves_within_wait(locker: Locker) -> None:
    holder = Holder(locker)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()

            async def let_go() -> None:
                await anyio.wait_all_tasks_blocked()  # the waiter below is blocked by now
                holder.release.set()

            group.start_soon(let_go)
            async with locker.lock(KEY, wait=GUARD, preempt=False):
                assert holder.released.is_set()


async def test_preempt_asks_the_holder_to_release(locker: Locker) -> None:
    holder = Holder(locker, yield_on_request=True)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            async with locker.lock(KEY, wait=GUARD, preempt=True) as lease:
                assert holder.released.is_set()
                assert not lease.release_requested  # a fresh lease for the new holder
    assert holder.requests == 1
    assert holder.lease is not None
    assert holder.lease.release_requested


async def test_preempt_calls_the_callback_even_when_the_holder_stays(locker: Locker) -> None:
    holder = Holder(locker)  # ignores the request
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            with pytest.raises(Locked):
                async with locker.lock(KEY, wait=0, preempt=True):
                    pytest.fail("entered a held lock")
            await holder.asked.wait()  # a request may cross processes: soon, not at once
            holder.release.set()
    assert holder.requests == 1


async def test_without_preempt_the_holder_is_not_asked(locker: Locker) -> None:
    holder = Holder(locker, yield_on_request=True)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            with pytest.raises(Locked):
                async with locker.lock(KEY, wait=0.05, preempt=False):
                    pytest.fail("entered a held lock")
            assert holder.requests == 0
            assert holder.lease is not None
            assert not holder.lease.release_requested
            assert not holder.released.is_set()
            holder.release.set()


async def test_lock_is_released_after_an_exception(locker: Locker) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with locker.lock(KEY, wait=0):
            raise RuntimeError("boom")
    with anyio.fail_after(GUARD):
        async with locker.lock(KEY, wait=0):
            pass


async def test_a_cancelled_waiter_neither_holds_nor_blocks(locker: Locker) -> None:
    holder = Holder(locker)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            with anyio.CancelScope() as scope:

                async def cancel_when_blocked() -> None:
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()

                group.start_soon(cancel_when_blocked)
                async with locker.lock(KEY, wait=GUARD, preempt=False):
                    pytest.fail("entered a held lock")
            assert scope.cancelled_caught
            holder.release.set()
        async with locker.lock(KEY, wait=0):
            pass


# -- Lease ----------------------------------------------------------------------------------------


def test_lease_calls_a_callback_registered_after_the_request_at_once() -> None:
    lease = Lease()
    calls: list[str] = []
    lease.on_release_request(lambda: calls.append("early"))
    lease.request_release()
    lease.request_release()  # asking twice calls nobody twice
    assert calls == ["early"]
    lease.on_release_request(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    assert lease.release_requested


# -- MemoryLocker internals -----------------------------------------------------------------------


async def test_memory_locker_entries_do_not_leak() -> None:
    locker = MemoryLocker()
    async with locker.lock(KEY, wait=0):
        assert locker.held(KEY)
    with pytest.raises(RuntimeError):
        async with locker.lock(KEY, wait=0):
            raise RuntimeError("boom")

    holder = Holder(locker, yield_on_request=True)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            with pytest.raises(Locked):  # timed out
                async with locker.lock(KEY, wait=0.01, preempt=False):
                    pass
            async with locker.lock(KEY, wait=GUARD):  # preempted the holder
                pass

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(_briefly_hold, locker)
    assert not locker.held(KEY)
    assert locker._entries == {}
    await locker.aclose()


async def _briefly_hold(locker: Locker) -> None:
    async with locker.lock(KEY, wait=GUARD, preempt=False):
        await anyio.lowlevel.checkpoint()


# -- PostgresLocker across replicas ---------------------------------------------------------------


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[PostgresLocker, PostgresLocker]]:
    """Two lockers in one namespace, as two server replicas (one through SQLAlchemy's DSN form)."""
    dsn = await postgres_dsn()
    first = new_postgres_locker(dsn)
    second = PostgresLocker(
        dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
        namespace=first.namespace,
        poll=0.01,
        heartbeat=0.05,
    )
    try:
        yield first, second
        for replica in (first, second):
            assert await advisory_locks_of(replica) == 0, "an advisory lock outlived its lease"
    finally:
        await first.aclose()
        await second.aclose()
    for replica in (first, second):
        assert replica._held == {}


async def terminate_session(locker: PostgresLocker) -> None:
    own = locker._connection
    assert own is not None
    observer = await asyncpg.connect(await postgres_dsn())
    try:
        assert await observer.fetchval("SELECT pg_terminate_backend($1)", own.get_server_pid())
    finally:
        await observer.close()


async def test_replicas_exclude_each_other(replicas: tuple[PostgresLocker, PostgresLocker]) -> None:
    first, second = replicas
    holder = Holder(first)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            with pytest.raises(Locked):
                async with second.lock(KEY, wait=0, preempt=False):
                    pytest.fail("entered a lock the other replica holds")
            async with second.lock("f" * 32, wait=0, preempt=False):
                pass  # another key is free

            async def let_go() -> None:
                await anyio.wait_all_tasks_blocked()
                holder.release.set()

            group.start_soon(let_go)
            async with second.lock(KEY, wait=GUARD, preempt=False):
                assert holder.release.is_set()  # its unlock may answer after our grant
    assert holder.requests == 0


async def test_preempt_crosses_replicas_by_notify(
    replicas: tuple[PostgresLocker, PostgresLocker],
) -> None:
    first, second = replicas
    holder = Holder(first, yield_on_request=True)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            async with second.lock(KEY, wait=GUARD, preempt=True) as lease:
                assert holder.release.is_set()  # its unlock may answer after our grant
                assert not lease.release_requested
    assert holder.requests == 1


async def test_a_release_wakes_a_waiter_of_another_replica_at_once(
    replicas: tuple[PostgresLocker, PostgresLocker],
) -> None:
    first, _ = replicas
    # Polls too rarely to get in by polling before its wait ends: only the freed notice can.
    patient = PostgresLocker(
        await postgres_dsn(), namespace=first.namespace, poll=GUARD * 2, heartbeat=0.05
    )
    holder = Holder(first)
    try:
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(holder.run)
                await holder.holding.wait()

                async def let_go() -> None:
                    # Once the patient's first try has failed and it waits for a notice; no
                    # event tells, so its state is looked at.
                    def waiting() -> bool:
                        return KEY in patient._wakers and not patient._connection_lock.locked()

                    while not waiting():  # noqa: ASYNC110
                        await anyio.sleep(0.001)
                    holder.release.set()

                group.start_soon(let_go)
                async with patient.lock(KEY, wait=GUARD, preempt=False):
                    assert holder.release.is_set()  # its unlock may answer after our grant
    finally:
        await patient.aclose()


async def test_fencing_tokens_grow_strictly_across_replicas(
    replicas: tuple[PostgresLocker, PostgresLocker],
) -> None:
    tokens: list[int] = []
    with anyio.fail_after(GUARD):
        for round_ in range(6):
            replica = replicas[round_ % 2]
            async with replica.lock(KEY if round_ % 3 else "cleanup", wait=GUARD) as lease:
                assert lease.token is not None
                tokens.append(lease.token)
    assert tokens == sorted(set(tokens)), tokens


async def test_a_holder_whose_session_is_killed_loses_its_lease(
    replicas: tuple[PostgresLocker, PostgresLocker],
) -> None:
    first, second = replicas
    holder = Holder(first)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            await terminate_session(first)
            await holder.asked.wait()  # told to stop by the lost connection
            assert holder.lease is not None
            assert holder.lease.lost
            async with second.lock(KEY, wait=GUARD, preempt=False):
                assert not holder.released.is_set()  # the stale holder is still inside
                holder.release.set()
                await holder.released.wait()  # and leaves without an error
        async with first.lock(KEY, wait=GUARD) as lease:  # connects again
            assert not lease.lost


async def test_a_session_killed_while_idle_is_replaced_unnoticed(
    replicas: tuple[PostgresLocker, PostgresLocker],
) -> None:
    first, _ = replicas
    with anyio.fail_after(GUARD):
        async with first.lock(KEY, wait=0):
            pass
        await terminate_session(first)  # as a PostgreSQL restart would
        async with first.lock(KEY, wait=GUARD) as lease:
            assert not lease.lost


async def test_aclose_frees_every_lock_and_loses_its_leases(
    replicas: tuple[PostgresLocker, PostgresLocker],
) -> None:
    first, second = replicas
    holder = Holder(first)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(holder.run)
            await holder.holding.wait()
            await first.aclose()
            assert holder.lease is not None
            assert holder.lease.lost
            assert holder.asked.is_set()
            async with second.lock(KEY, wait=GUARD, preempt=False):
                holder.release.set()
                await holder.released.wait()  # the stale holder leaves without an error


def local_server_process(pid: int) -> bool:
    """Whether ``pid`` is a PostgreSQL server process on this host (not some other process that
    happens to have the pid of a remote server's backend)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"postgres" in cmdline.read()
    except OSError:
        return False


async def test_a_silent_session_fails_the_heartbeat_and_loses_its_lease() -> None:
    """The holder's server process is stopped (SIGSTOP), as if its host were cut off."""
    locker = new_postgres_locker(await postgres_dsn(), heartbeat=0.05, timeout=0.2)
    holder = Holder(locker)
    stoppable = True
    try:
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(holder.run)
                await holder.holding.wait()
                own = locker._connection
                assert own is not None
                pid = own.get_server_pid()
                try:
                    if not local_server_process(pid):
                        raise ProcessLookupError(pid)
                    os.kill(pid, signal.SIGSTOP)
                except (PermissionError, ProcessLookupError):
                    stoppable = False
                else:
                    try:
                        await holder.asked.wait()
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    assert holder.lease is not None
                    assert holder.lease.lost
                holder.release.set()
            if not stoppable:
                pytest.skip("the lock session's server process is not on this host or ours")
            async with locker.lock(KEY, wait=GUARD) as lease:
                assert not lease.lost
    finally:
        await locker.aclose()


async def test_a_cancelled_body_or_waiter_leaves_no_lock(
    replicas: tuple[PostgresLocker, PostgresLocker],
) -> None:
    first, second = replicas
    with anyio.fail_after(GUARD):
        with anyio.CancelScope() as scope:
            async with first.lock(KEY, wait=0):
                scope.cancel()
                await anyio.sleep_forever()
        async with second.lock(KEY, wait=0, preempt=False):  # freed before the cancel went on
            with anyio.CancelScope() as scope:

                async def cancel_when_blocked() -> None:
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()

                async with anyio.create_task_group() as group:
                    group.start_soon(cancel_when_blocked)
                    async with first.lock(KEY, wait=GUARD, preempt=False):
                        pytest.fail("entered a lock the other replica holds")
            assert await advisory_locks_of(first) == 0
        async with first.lock(KEY, wait=0, preempt=False):
            pass


async def test_an_unreachable_database_is_unavailable_not_a_driver_error() -> None:
    locker = PostgresLocker("postgresql://postgres@127.0.0.1:1/test", timeout=1.0)
    assert locker._connection is None  # nothing connects before the first lock
    for _ in range(2):  # the second fails fast, without a connect
        with pytest.raises(Unavailable) as caught:
            async with locker.lock(KEY, wait=GUARD):
                pytest.fail("locked without a database")
        assert caught.value.status == 503
        assert "Retry-After" in caught.value.headers
        assert "\n" not in caught.value.message
        assert "unreachable (" in caught.value.message  # with the reason
    await locker.aclose()


def test_only_postgresql_dsns_are_taken() -> None:
    assert asyncpg_dsn("postgresql+asyncpg://u@h:5/d") == "postgresql://u@h:5/d"
    assert asyncpg_dsn("postgres://u@h/d") == "postgresql://u@h/d"
    with pytest.raises(ValueError, match="DSN"):
        PostgresLocker("sqlite+aiosqlite:///x.db")
    with pytest.raises(ValueError, match="dead_after"):
        PostgresLocker("postgresql://h/d", heartbeat=5, dead_after=6)
    assert keepalive_settings(10) == {
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "1",
        "tcp_keepalives_count": "5",
        "tcp_user_timeout": "10000",
    }
