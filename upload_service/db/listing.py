"""The repository's listings: uploads in a state, a page of the JSON API's list (newest first,
keyed by creation time and id), the expired, the finals waiting for their parts and the ended
uploads due for clean-up. A base of ``SqlUploadRepository``, which adds the transitions.

Crash story: none of its own. Listings only read; each runs in one connection and sees one
committed state, so a process killed meanwhile is seen either before or after its commit.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, or_, select

from upload_service.db.base import UploadQuery
from upload_service.db.outbox import SqlOutbox
from upload_service.db.parts import awaited, loaded
from upload_service.db.rows import UPLOADS, in_states, utc
from upload_service.uploads import ENDED_STATES, Upload, UploadState


class SqlListing(SqlOutbox):
    """The listing queries over ``Transactions`` (and the ``Outbox``)."""

    async def list_by_state(self, state: UploadState) -> list[Upload]:
        return await self._list(UPLOADS.c.state == state.value)

    async def list_page(self, query: UploadQuery) -> list[Upload]:
        conditions: list[ColumnElement[bool]] = []
        if query.owner is not None:
            conditions.append(UPLOADS.c.owner == query.owner)
        if query.states:
            conditions.append(in_states(query.states))
        if query.direct is not None:
            conditions.append(UPLOADS.c.direct == query.direct)
        if query.created_after is not None:
            conditions.append(UPLOADS.c.created_at >= utc(query.created_after))
        if query.created_before is not None:
            conditions.append(UPLOADS.c.created_at < utc(query.created_before))
        if query.after is not None:
            moment = utc(query.after.created_at)
            conditions.append(
                or_(
                    UPLOADS.c.created_at < moment,
                    and_(UPLOADS.c.created_at == moment, UPLOADS.c.id < query.after.id),
                )
            )
        statement = (
            select(UPLOADS)
            .where(*conditions)
            .order_by(UPLOADS.c.created_at.desc(), UPLOADS.c.id.desc())
            .limit(query.limit)
        )
        return await self._sessions.run(partial(_uploads, statement))

    async def list_expired(self, now: datetime) -> list[Upload]:
        return await self._list(
            UPLOADS.c.state == UploadState.RECEIVING.value, UPLOADS.c.expires_at <= now
        )

    async def list_finals_waiting(self) -> list[Upload]:
        return await self._list(
            UPLOADS.c.state == UploadState.RECEIVING.value, UPLOADS.c.concat == "final"
        )

    async def list_ended(self, before: datetime) -> list[Upload]:
        return await self._list(
            in_states(ENDED_STATES), UPLOADS.c.state_changed_at < before, ~awaited()
        )

    async def _list(self, *conditions: ColumnElement[bool]) -> list[Upload]:
        return await self._sessions.run(partial(_uploads, select(UPLOADS).where(*conditions)))


def _uploads(statement: Select[Any], connection: Connection) -> list[Upload]:
    return loaded(connection, connection.execute(statement).all())
