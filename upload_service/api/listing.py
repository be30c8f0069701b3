"""``GET /api/uploads``: the caller's uploads, newest first, a page at a time.

The cursor is opaque to clients: the last listed upload's creation time and id (the repository's
``PageKey``), base64url-encoded JSON. Filters are not part of it: a client sends the same filters
with every page.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from upload_service.api.routes import ServicesDep, UploadOut, download_url_of
from upload_service.db.base import PageKey, UploadQuery
from upload_service.errors import BadRequest, Forbidden
from upload_service.tus.routes import EndpointDep, PrincipalDep
from upload_service.uploads import UploadState

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

router = APIRouter()


class UploadPage(BaseModel):
    uploads: list[UploadOut]
    # pass as ``cursor`` for the next page (same filters); null: this was the last page
    next_cursor: str | None


def encode_cursor(key: PageKey) -> str:
    text = json.dumps({"t": key.created_at.astimezone(UTC).isoformat(), "i": key.id})
    return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> PageKey:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        fields = json.loads(raw)
        moment = datetime.fromisoformat(fields["t"])
        upload_id = fields["i"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise BadRequest("cursor is not one this service handed out") from None
    if not isinstance(upload_id, str) or moment.tzinfo is None:
        raise BadRequest("cursor is not one this service handed out")
    return PageKey(moment, upload_id)


def _utc(moment: datetime | None) -> datetime | None:
    """A moment without an offset is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get("/api/uploads", response_model=UploadPage)
async def list_uploads(
    services: ServicesDep,
    principal: PrincipalDep,
    endpoint: EndpointDep,
    state: Annotated[
        list[UploadState] | None, Query(description="only uploads in these states (repeatable)")
    ] = None,
    created_after: Annotated[
        datetime | None, Query(description="created at or after (ISO 8601; no offset: UTC)")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="created before (ISO 8601; no offset: UTC)")
    ] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> UploadPage:
    """The caller's uploads (every upload on an open service), newest first."""
    if principal.ticket is not None:
        raise Forbidden("an upload ticket reaches only the uploads it made: it cannot list")
    query = UploadQuery(
        owner=principal.owner,  # None only for the caller of an open service: everyone's
        states=tuple(state or ()),
        created_after=_utc(created_after),
        created_before=_utc(created_before),
        after=None if cursor is None else decode_cursor(cursor),
        limit=limit + 1,  # one more than asked tells whether another page follows
    )
    found = await services.repository.list_page(query)
    uploads = found[:limit]
    next_cursor = None
    if len(found) > limit:
        last = uploads[-1]
        next_cursor = encode_cursor(PageKey(last.created_at, last.id))
    return UploadPage(
        uploads=[
            UploadOut.of(upload, download_url_of(upload, services, endpoint)) for upload in uploads
        ],
        next_cursor=next_cursor,
    )
