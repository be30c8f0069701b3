"""Every dependency of every route is a coroutine function: FastAPI runs a plain function's
dependency in a worker thread, one thread hop (two context switches and a loop wake-up) per
dependency per request, for functions that do no I/O at all."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from upload_service.app import create_app
from upload_service.settings import Settings


def _routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, also those of included routers (FastAPI 0.165 keeps an included router
    whole, as one route whose ``original_router`` holds its routes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)


def _calls(dependant: Dependant) -> Iterator[object]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def test_every_dependency_runs_on_the_loop(settings: Settings) -> None:
    app = create_app(settings, settle_heap=False)
    routes = list(_routes(app.routes))
    assert {"/api/uploads/{upload_id}", "/api/uploads"} <= {route.path for route in routes}
    plain = {
        f"{route.path} {getattr(call, '__qualname__', call)}"
        for route in routes
        for call in _calls(route.dependant)
        if not inspect.iscoroutinefunction(call)
    }
    assert not plain, f"dependencies that FastAPI would run in a thread: {sorted(plain)}"


def _plain() -> int:
    return 1


_plain_router = APIRouter()


@_plain_router.get("/plain")
async def _plain_route(value: Annotated[int, Depends(_plain)]) -> int:
    return value


def test_the_check_sees_a_plain_dependency(settings: Settings) -> None:
    app = create_app(settings, settle_heap=False)
    app.include_router(_plain_router)
    found = [
        call for r in _routes(app.routes) if r.path == "/plain" for call in _calls(r.dependant)
    ]
    assert found == [_plain]
