"""Plain form uploads: ``POST /api/uploads`` with ``multipart/form-data`` (HTML forms, ``curl -F``).

Each file part streams into storage as it is parsed (``multipart.FormReader`` fed from the request
stream, nothing spooled) and becomes an ordinary upload through the tus handler
(``TusHandler.create_whole``): the same size, type, metadata, owner, quota and pre-create rules as a
tus creation. Text fields before the files become every file's metadata; the file's own name and
type come from its part (``filename``, ``filetype``). The request is all or nothing: a malformed or
truncated body, or any refused file, terminates the uploads it started, and the answer is the error.
"""

from __future__ import annotations

import re

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from upload_service.api.multipart import FormReader, PartInfo, form_boundary
from upload_service.api.routes import ServicesDep, UploadOut, download_url_of
from upload_service.errors import BadRequest
from upload_service.tus.request import TusRequest
from upload_service.tus.routes import EndpointDep, PrincipalDep, request_body
from upload_service.uploads import Metadata, Upload

router = APIRouter()

_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a metadata key: an HTTP token
# part types that say nothing about the file (curl -F and browsers send them for unknown files)
_UNTYPED = ("", "application/octet-stream")


@router.post("/api/uploads", status_code=201, response_model=list[UploadOut])
async def form_upload(
    request: Request, services: ServicesDep, principal: PrincipalDep, endpoint: EndpointDep
) -> JSONResponse:
    """One upload per file part of a multipart/form-data body, created as a tus upload would be."""
    form = FormReader(request_body(request), form_boundary(request.headers.get("content-type")))
    handler = services.handler
    fields: Metadata = {}
    created: list[Upload] = []
    base = TusRequest(principal=principal, endpoint=endpoint)
    try:
        while (part := await form.next_part()) is not None:
            if part.filename is None:
                if created:
                    raise BadRequest(
                        f"form field {part.name!r} comes after a file: "
                        "put the text fields before the files"
                    )
                _check_key(part.name, fields)
                settings = services.settings
                if len(fields) >= settings.limits.max_metadata_keys:
                    raise BadRequest(
                        f"the form has more than {settings.limits.max_metadata_keys} text fields"
                    )
                used = sum(len(key) + len(value or b"") for key, value in fields.items())
                fields[part.name] = await form.read_text(
                    max(settings.limits.max_metadata_bytes - used, 0)
                )
                continue
            if not part.filename:  # a file input left empty: browsers send an empty part
                async for _ in form.data():
                    pass
                continue
            metadata = file_metadata(fields, part)
            created.append(await handler.create_whole(base, metadata, form.data()))
        if not created:
            raise BadRequest("the form holds no file")
    except BaseException:
        with anyio.CancelScope(shield=True):
            for upload in created:
                await handler.discard(TusRequest(upload.id, principal=principal, endpoint=endpoint))
        raise
    body = [
        UploadOut.of(upload, download_url_of(upload, services, endpoint)).model_dump(mode="json")
        for upload in created
    ]
    return JSONResponse(body, status_code=201)


def _check_key(name: str, fields: Metadata) -> None:
    if not _KEY.fullmatch(name):
        raise BadRequest(
            f"form field name {name[:60]!r} cannot be a metadata key "
            "(letters, digits and !#$%&'*+-.^_`|~ only)"
        )
    if name in fields or name in ("filename", "filetype"):
        raise BadRequest(f"form field {name!r} is given twice (or names the file's own metadata)")


def file_metadata(fields: Metadata, part: PartInfo) -> Metadata:
    """A file's metadata: the form's text fields, its ``filename`` and, when the part's type
    says something, its ``filetype`` (checked against the allowed types like a tus client's)."""
    metadata = dict(fields)
    metadata["filename"] = (part.filename or "").encode()
    content_type = (part.content_type or "").split(";", 1)[0].strip().lower()
    if content_type not in _UNTYPED:
        metadata["filetype"] = content_type.encode()
    return metadata
