"""``upload_service.threads``: worker-thread calls of the request path."""

from __future__ import annotations

import contextvars
import multiprocessing
import threading
import time

import anyio
import pytest

from upload_service import threads
from upload_service.threads import ThreadPool

_VARIABLE: contextvars.ContextVar[str] = contextvars.ContextVar("test_threads", default="unset")


async def test_a_call_returns_its_result_from_another_thread() -> None:
    loop_thread = threading.get_ident()
    result = await threads.run_sync(lambda a, b: (a + b, threading.get_ident()), 2, 3)
    assert result[0] == 5
    assert result[1] != loop_thread


async def test_a_call_raises_its_exception_in_the_caller() -> None:
    def fails() -> None:
        raise ValueError("from the worker")

    with pytest.raises(ValueError, match="from the worker"):
        await threads.run_sync(fails)


async def test_a_call_sees_the_callers_context_variables() -> None:
    _VARIABLE.set("the request's")
    assert await threads.run_sync(_VARIABLE.get) == "the request's"


async def test_a_cancelled_caller_waits_for_its_call_to_end() -> None:
    ended = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        ended.set()

    with anyio.move_on_after(0.02) as scope:
        await threads.run_sync(slow)
        await anyio.sleep(1)  # the next checkpoint sees the cancellation
    assert scope.cancelled_caught
    assert ended.is_set()  # never abandoned half-way


async def test_calls_beyond_the_threads_wait_their_turn() -> None:
    pool = ThreadPool(max_threads=2, idle_seconds=5)
    running = 0
    most = 0
    lock = threading.Lock()

    def work(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return n

    results: list[int] = []

    async def one(n: int) -> None:
        results.append(await threads.run_sync(work, n, pool=pool))

    async with anyio.create_task_group() as group:
        for n in range(20):
            group.start_soon(one, n)
    assert sorted(results) == list(range(20))
    assert most == 2
    assert pool.threads == 2


async def test_idle_threads_end_and_new_calls_start_them_again() -> None:
    pool = ThreadPool(max_threads=4, idle_seconds=0.02)
    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(lambda: threads.run_sync(time.sleep, 0.05, pool=pool))
    assert pool.threads == 4
    for _ in range(500):
        if not pool.threads:
            break
        await anyio.sleep(0.01)
    assert pool.threads == 0
    assert await threads.run_sync(lambda: 7, pool=pool) == 7


async def test_no_call_is_lost_while_threads_idle_out() -> None:
    # calls arrive just as idle workers time out: each must still be run
    pool = ThreadPool(max_threads=3, idle_seconds=0.001)

    def same(n: int) -> int:
        return n

    with anyio.fail_after(20):
        for n in range(300):
            assert await threads.run_sync(same, n, pool=pool) == n
            if n % 7 == 0:
                await anyio.sleep(0.001)


def _call_once_in_child() -> None:
    import asyncio

    assert asyncio.run(threads.run_sync(lambda: 42)) == 42


async def test_a_forked_child_makes_its_own_threads() -> None:
    # the parent's pool has idle workers; in a forked child they do not exist
    assert await threads.run_sync(lambda: 1) == 1
    for _ in range(500):  # the worker goes idle just after it hands the result back
        if threads.process_pool().idle:
            break
        await anyio.sleep(0.01)
    assert threads.process_pool().idle
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_call_once_in_child, daemon=True)
    child.start()
    try:
        await threads.run_sync(child.join, 30)
        assert child.exitcode == 0  # None: still waiting for a worker that is not there
    finally:
        child.kill()
