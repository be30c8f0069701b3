"""``python:package.module:function`` hooks: loaded at start-up, called with a timeout; a sync
callable runs in the thread pool (it may block: boto3, shutil), an async one is awaited."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio.to_thread

PREFIX = "python:"


class HookConfigError(Exception):
    """A hook named by a setting cannot be loaded; the message names the variable."""


def load_callable(spec: str, variable: str) -> Callable[..., Any]:
    """Import ``python:package.module:function`` (the function may be ``Class.method``)."""
    module_name, _, qualified = spec.removeprefix(PREFIX).partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise HookConfigError(f"{variable}: cannot import {module_name}: {exc}") from exc
    for name in qualified.split("."):
        if not hasattr(target, name):
            raise HookConfigError(f"{variable}: {module_name} has no {qualified}")
        target = getattr(target, name)
    if not callable(target):
        raise HookConfigError(f"{variable}: {spec.removeprefix(PREFIX)} is not callable")
    return target


async def call_hook(function: Callable[..., Any], argument: object, limit: float) -> object:
    """Call ``function(argument)`` within ``limit`` seconds (``TimeoutError`` beyond). A sync
    one left running in its thread past the timeout is abandoned, not stopped: hooks must be
    safe to run again (an event is delivered at least once)."""
    with anyio.fail_after(limit):
        if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            getattr(function, "__call__", None)  # noqa: B004 - an object with async __call__
        ):
            return await function(argument)
        return await anyio.to_thread.run_sync(partial(function, argument), abandon_on_cancel=True)
