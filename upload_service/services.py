"""What the lifespan builds and the routes use: one object on ``app.state``, no module globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from upload_service.auth.setup import OPEN, Auth

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from upload_service.db.base import UploadRepository
    from upload_service.hooks.delivery import Drainer
    from upload_service.locking.base import Locker
    from upload_service.outbox import Outbox
    from upload_service.settings import Settings
    from upload_service.storage.base import Store
    from upload_service.tickets import TicketRepository
    from upload_service.tus.handler import TusHandler


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    repository: UploadRepository
    store: Store
    locker: Locker
    handler: TusHandler
    auth: Auth = OPEN  # who callers are (built in the app's lifespan; open for CLI commands)
    outbox: Outbox | None = None  # events and their delivery state (the JSON API shows them)
    drainer: Drainer | None = None  # delivers the outbox (None: no hooks configured)
    tickets: TicketRepository | None = None  # upload tickets (None: not offered)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def services_dependency(request: Request) -> Services:
    """``get_services`` for ``Depends``. A coroutine, as every dependency of ours is: FastAPI calls
    a plain function's dependency in a worker thread, a thread hop per request for nothing."""
    return get_services(request)
