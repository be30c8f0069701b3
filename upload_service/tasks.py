"""Background work (verification, assembly of final uploads, clean-up) started by the handler.

``TaskRunner`` runs work in a task group owned by the app's lifespan, so nothing outlives the app;
``InlineRunner`` awaits it on the spot (the CLI, and tests that want determinism). A failed task is
logged with its traceback and leaves its upload in a state that start-up resumes from.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from upload_service.errors import ServiceError

logger = logging.getLogger("upload_service.tasks")

Work = Callable[[], Coroutine[Any, Any, None]]


class Runner(Protocol):
    async def spawn(self, work: Work, name: str) -> None: ...


class InlineRunner:
    async def spawn(self, work: Work, name: str) -> None:
        await work()


class TaskRunner:
    def __init__(self) -> None:
        self._group: TaskGroup | None = None
        self._running = 0
        self._idle = anyio.Event()
        self._idle.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own a task group for the block; leaving it cancels what still runs and waits."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield
            finally:
                self._group = None
                group.cancel_scope.cancel()

    def _task_group(self) -> TaskGroup:
        if self._group is None:
            raise RuntimeError("TaskRunner.running() is not active")
        return self._group

    async def spawn(self, work: Work, name: str) -> None:
        group = self._task_group()
        self._running += 1
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        group.start_soon(self._run, work, name, name=name)

    def start_service(self, work: Work, name: str) -> None:
        """A task that runs until the runner stops (not counted by ``wait_idle``)."""
        self._task_group().start_soon(work, name=name)

    async def _run(self, work: Work, name: str) -> None:
        try:
            await work()
        except ServiceError as exc:
            logger.error("background task %s failed: %s", name, exc.message)
        except Exception:
            logger.exception("background task %s failed", name)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no background task runs (tests and graceful shutdown)."""
        while self._running:
            await self._idle.wait()
