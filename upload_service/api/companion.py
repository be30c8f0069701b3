"""Direct uploads over HTTP, as Uppy's AwsS3 plugin speaks to a Companion server
(docs/direct-uploads.md): thin adapters over ``tus.direct.DirectUploads``.

The same endpoints are served twice: under ``/s3/`` for a caller with the usual credentials
(``Authorization``), and under a ticket's ``companion_endpoint``, ``/companion/<ticket>/s3/``,
whose path is the credential (the plugin's requests carry no header). Answers are the shapes the
plugin reads (``@uppy/aws-s3`` 6, ``CompanionS3.ts``); errors are the service's one JSON format.
"""

# No ``from __future__ import annotations``: the routes' dependencies are local to ``_routes``,
# and FastAPI reads each annotation when the route is added.

import json
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from upload_service.auth.principal import Principal
from upload_service.errors import BadRequest
from upload_service.services import Services, get_services, services_dependency
from upload_service.tus.direct import part_number
from upload_service.tus.routes import EndpointDep, request_principal

router = APIRouter()
ServicesDep = Annotated[Services, Depends(services_dependency)]
KeyQuery = Annotated[str, Query(min_length=1, max_length=1024, description="the object key")]
MAX_FIELD = 1024  # characters of a metadata value the plugin sends


class StartIn(BaseModel):
    """``POST .../s3/multipart``: what the plugin knows of the file (``size`` is ours: the plugin
    sends none, another client may)."""

    model_config = ConfigDict(extra="ignore")

    filename: str | None = Field(default=None, max_length=MAX_FIELD)
    type: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] | None = None
    size: int | None = Field(default=None, ge=0)


class PartIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    PartNumber: int
    ETag: str = Field(max_length=256)


class CompleteIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    parts: list[PartIn] = Field(max_length=10_000)


async def ticket_principal(request: Request, ticket: str) -> Principal:
    """The caller of a ``companion_endpoint``: the ticket in its path."""
    return await get_services(request).auth.ticket(ticket)


def _fields(metadata: dict[str, Any] | None) -> dict[str, str]:
    """The plugin's ``file.meta`` as metadata text (name and type go apart; empty values and
    nulls are dropped; anything not text is written as JSON)."""
    fields: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if key in ("name", "type") or value is None or value == "":
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if len(text) > MAX_FIELD:
            raise BadRequest(f"metadata {key[:40]!r} is longer than {MAX_FIELD} characters")
        fields[key] = text
    return fields


def _query_metadata(request: Request) -> dict[str, Any]:
    """``metadata[k]=v`` query parameters (the plugin's ``GET /s3/params``)."""
    found: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            found[name[len("metadata[") : -1]] = value
    return found


PrincipalOf = Callable[..., Awaitable[Principal]]


def _routes(prefix: str, principal_of: PrincipalOf) -> None:
    PrincipalDep = Annotated[Principal, Depends(principal_of)]

    async def start(
        body: StartIn, services: ServicesDep, principal: PrincipalDep
    ) -> dict[str, str]:
        """Start a multipart upload the browser sends the parts of straight to the bucket."""
        started = await services.handler.direct.start_multipart(
            principal,
            filename=body.filename,
            content_type=body.type,
            metadata=_fields(body.metadata),
            size=body.size,
        )
        assert started.multipart_id is not None
        return {"key": started.key, "uploadId": started.multipart_id}

    async def sign(
        upload_id: str,
        number: str,
        key: KeyQuery,
        services: ServicesDep,
        principal: PrincipalDep,
    ) -> dict[str, object]:
        """A presigned URL to PUT part ``number`` to."""
        part = part_number(number)
        direct = services.handler.direct
        upload = await direct.find(principal, key, upload_id)
        url = await direct.sign_part(upload, part)
        return {"url": url, "expires": services.settings.s3.direct_url_ttl}

    async def parts(
        upload_id: str, key: KeyQuery, services: ServicesDep, principal: PrincipalDep
    ) -> list[dict[str, object]]:
        """The parts the bucket holds so far (a browser resuming)."""
        direct = services.handler.direct
        upload = await direct.find(principal, key, upload_id)
        return [
            {"PartNumber": part.number, "Size": part.size, "ETag": part.etag}
            for part in await direct.parts(upload)
        ]

    async def complete(
        upload_id: str,
        key: KeyQuery,
        body: CompleteIn,
        services: ServicesDep,
        principal: PrincipalDep,
        endpoint: EndpointDep,
    ) -> dict[str, object]:
        """Complete the multipart upload: the upload goes on to ``verifying``, then ``ready``."""
        direct = services.handler.direct
        upload = await direct.find(principal, key, upload_id)
        upload = await direct.complete(
            principal, upload, [(part.PartNumber, part.ETag) for part in body.parts]
        )
        return {
            # Uppy's uploadURL: the upload's own URL here, so the app learns its id
            "location": endpoint.url(
                upload.id, relative=services.settings.server.relative_location
            ),
            "key": key,
            "bucket": services.settings.s3.bucket,
            "id": upload.id,
            "state": upload.state.value,
        }

    async def abort(
        upload_id: str, key: KeyQuery, services: ServicesDep, principal: PrincipalDep
    ) -> Response:
        """Give the upload up: terminated, its parts deleted."""
        direct = services.handler.direct
        upload = await direct.find(principal, key, upload_id)
        await direct.abort(upload)
        return Response(status_code=204)

    async def params(
        request: Request,
        services: ServicesDep,
        principal: PrincipalDep,
        filename: Annotated[str | None, Query(max_length=MAX_FIELD)] = None,
        type: Annotated[str | None, Query(max_length=255)] = None,
        size: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict[str, object]:
        """A form-POST policy for one small file (the plugin's path below its multipart
        threshold). The service finds the object once it arrives."""
        started = await services.handler.direct.start_post(
            principal,
            filename=filename,
            content_type=type,
            metadata=_fields(_query_metadata(request)),
            size=size,
        )
        assert started.policy is not None
        return {
            "method": "POST",
            "url": started.policy.url,
            "fields": started.policy.fields,
            "headers": {},
        }

    tags: list[str | Enum] = ["direct uploads"]
    router.add_api_route(f"{prefix}/s3/multipart", start, methods=["POST"], tags=tags)
    router.add_api_route(
        f"{prefix}/s3/multipart/{{upload_id}}/complete", complete, methods=["POST"], tags=tags
    )
    router.add_api_route(
        f"{prefix}/s3/multipart/{{upload_id}}/{{number}}", sign, methods=["GET"], tags=tags
    )
    router.add_api_route(f"{prefix}/s3/multipart/{{upload_id}}", parts, methods=["GET"], tags=tags)
    router.add_api_route(
        f"{prefix}/s3/multipart/{{upload_id}}", abort, methods=["DELETE"], tags=tags
    )
    router.add_api_route(f"{prefix}/s3/params", params, methods=["GET"], tags=tags)


_routes("", request_principal)
_routes("/companion/{ticket}", ticket_principal)
