"""Blocking calls of the request path (file system, SQLite) in worker threads, at a small cost
to the loop: ``run_sync``.

``anyio.to_thread.run_sync`` costs the loop thread about a fifth of a PATCH's CPU here, each
call making a checkpoint (a turn of the loop), a capacity limiter's shielded checkpoint (another),
two cancel scopes and a context copy before the worker thread even starts. A PATCH makes seven
such calls, a HEAD five. ``run_sync`` keeps what the request path relies on and drops the rest:

- the call is never abandoned half-way: a caller cancelled meanwhile (by an anyio cancel scope)
  waits for it to end, then sees the cancellation, as with anyio's default;
- the caller's context variables (the request's log context) are the call's;
- its exception, or its result, comes back to the caller;
- at most ``MAX_THREADS`` threads run calls at once, started as needed and ended after
  ``IDLE_SECONDS`` unused; calls beyond that wait, first in, first out.

What it does not do: it is no checkpoint (a cancelled scope is noticed at the next one), and it
has no per-call limiter (a caller bounds its own calls, as ``ThreadTransactions`` does).
The pool is made on first use, once per process (a child made by fork makes its own), and its
threads are daemons: a call still running at exit does not hold the process up (every caller
waits for its calls first).

Crash story: none of its own. A call is a thread running the caller's function; a kill -9 ends
it as it ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, TypeVarTuple, Unpack

import anyio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

MAX_THREADS = 40  # as many as anyio's default limiter allows
IDLE_SECONDS = 10.0


class _Call(Generic[T]):
    __slots__ = ("_args", "_context", "_func", "_future", "_loop")

    def __init__(
        self,
        func: Callable[..., T],
        args: tuple[object, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        self._func = func
        self._args = args
        self._context = contextvars.copy_context()
        self._loop = loop
        self._future = future

    def run(self) -> None:
        try:
            result = self._context.run(self._func, *self._args)
        except BaseException as exc:  # handed to the caller, whatever it is
            self._deliver(_fail, exc)
        else:
            self._deliver(_succeed, result)

    def _deliver(self, outcome: Callable[[asyncio.Future[T], object], None], value: object) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(outcome, self._future, value)


def _succeed(future: asyncio.Future[T], value: object) -> None:
    if not future.done():
        future.set_result(value)  # type: ignore[arg-type]


def _fail(future: asyncio.Future[T], exc: object) -> None:
    if not future.done():
        assert isinstance(exc, BaseException)
        future.set_exception(exc)


class _Worker:
    """One thread; while idle, it waits on its own queue for the next call."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call[object]] = queue.SimpleQueue()

    def give(self, call: _Call[object]) -> None:
        self._calls.put(call)

    def wait(self, timeout: float | None) -> _Call[object] | None:
        try:
            return self._calls.get(timeout=timeout)
        except queue.Empty:
            return None


class ThreadPool:
    """At most ``max_threads`` workers; an idle one takes the next call (the one idle last,
    so few stay warm), else a new one starts, else the call waits in the backlog."""

    def __init__(self, max_threads: int = MAX_THREADS, idle_seconds: float = IDLE_SECONDS) -> None:
        self._max = max_threads
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._backlog: deque[_Call[object]] = deque()
        self._threads = 0

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def idle(self) -> int:
        return len(self._idle)

    def submit(self, call: _Call[object]) -> None:
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
            elif self._threads < self._max:
                self._threads += 1
                worker = None
            else:
                self._backlog.append(call)
                return
        if worker is not None:
            worker.give(call)
            return
        thread = threading.Thread(target=self._work, args=(call,), name="upload-io", daemon=True)
        thread.start()

    def _work(self, call: _Call[object]) -> None:
        worker = _Worker()
        current: _Call[object] | None = call
        while current is not None:
            current.run()
            current = self._next(worker)

    def _next(self, worker: _Worker) -> _Call[object] | None:
        """The next call for ``worker``, or None when it has idled out (and has left)."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            self._idle.append(worker)
        call = worker.wait(self._idle_seconds)
        if call is not None:
            return call
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                self._threads -= 1
                return None
        # taken by a submit between the timeout and the lock: its call is on the way
        return worker.wait(None)


_pool: ThreadPool | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a child made by fork: the parent's workers are not there, so their pool is dropped
    (a call handed to one would wait for ever) and the child makes its own on first use."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def process_pool() -> ThreadPool:
    """The process's pool (made on first use)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPool()
    return _pool


async def run_sync(
    func: Callable[[Unpack[Ts]], T], *args: *Ts, pool: ThreadPool | None = None
) -> T:
    """``func(*args)`` in a worker thread of ``pool`` (the process's, by default; see the
    module's docstring)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    (pool or process_pool()).submit(_Call(func, args, loop, future))  # type: ignore[arg-type]
    with anyio.CancelScope(shield=True):
        result = await future
    return result
