"""The tus endpoints in the OpenAPI document: ``TusEndpoints`` answers below FastAPI's router, so
FastAPI does not see them; their path items are written here, from ``TUS_ROUTES``, with the
headers and answers of docs/protocol.md."""

from __future__ import annotations

from typing import Any

from upload_service.tus.protocol import TUS_ROUTES

_TAG = "tus 1.0.0"


def _header(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


_RESUMABLE = _header("Tus-Resumable", "1.0.0 (every request but OPTIONS)")
_AUTH = _header("Authorization", "Bearer <token> when the service requires authentication")
_ID = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _answers(**codes: str) -> dict[str, Any]:
    return {code.lstrip("_"): {"description": text} for code, text in codes.items()}


_REFUSALS = {
    "_400": "a malformed or missing header (the reason as one line of text)",
    "_401": "no valid credentials",
    "_403": "the caller may not do this to this upload, or its quota is used up",
    "_404": "no such upload",
    "_410": "the upload was terminated, expired or failed",
    "_503": "the service is starting or its database is out of reach (Retry-After)",
}

_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/", "OPTIONS"): {
        "summary": "The server's tus versions, extensions, checksums and maximum size",
        "parameters": [],
        "responses": _answers(_204="Tus-Version, Tus-Extension, Tus-Max-Size, ..."),
    },
    ("/", "POST"): {
        "summary": "Create an upload (creation, creation-with-upload, concatenation)",
        "parameters": [
            _RESUMABLE,
            _AUTH,
            _header("Upload-Length", "the size in bytes (or Upload-Defer-Length: 1)"),
            _header("Upload-Defer-Length", "1 when the size comes later"),
            _header("Upload-Metadata", "key base64value pairs, comma-separated"),
            _header("Upload-Concat", "partial, or final;<url> <url> ..."),
            _header("Upload-Checksum", "<algorithm> <base64 digest> of a body sent along"),
        ],
        "responses": _answers(
            _201="created: Location names the upload; Upload-Offset when a body came along",
            _413="larger than the maximum size",
            **_REFUSALS,
        ),
    },
    ("/{upload_id}", "OPTIONS"): {
        "summary": "As OPTIONS on the collection",
        "parameters": [_ID],
        "responses": _answers(_204="Tus-Version, Tus-Extension, Tus-Max-Size, ..."),
    },
    ("/{upload_id}", "HEAD"): {
        "summary": "The upload's offset: where to resume",
        "parameters": [_ID, _RESUMABLE, _AUTH],
        "responses": _answers(
            _200="Upload-Offset, and Upload-Length (or Upload-Defer-Length), Upload-Metadata",
            **_REFUSALS,
        ),
    },
    ("/{upload_id}", "PATCH"): {
        "summary": "Append the body at Upload-Offset",
        "parameters": [
            _ID,
            _RESUMABLE,
            _AUTH,
            _header("Upload-Offset", "the upload's current offset", required=True),
            _header("Content-Type", "application/offset+octet-stream", required=True),
            _header("Upload-Checksum", "<algorithm> <base64 digest> of this body"),
            _header("Upload-Length", "the size, once, on an upload created without it"),
        ],
        "requestBody": {
            "content": {
                "application/offset+octet-stream": {
                    "schema": {"type": "string", "format": "binary"}
                }
            }
        },
        "responses": _answers(
            _204="stored durably: Upload-Offset is the new offset",
            _409="Upload-Offset is not the upload's offset (HEAD gives it)",
            _415="the Content-Type is not application/offset+octet-stream",
            _423="another request is writing this upload (retry shortly)",
            _460="the body does not match Upload-Checksum: nothing of it was kept",
            **_REFUSALS,
        ),
    },
    ("/{upload_id}", "DELETE"): {
        "summary": "Terminate the upload and delete its data",
        "parameters": [_ID, _RESUMABLE, _AUTH],
        "responses": _answers(_204="deleted", **_REFUSALS),
    },
    ("/{upload_id}", "GET"): {
        "summary": "Download a ready upload (Range, conditional requests, signed links)",
        "parameters": [
            _ID,
            _AUTH,
            _header("Range", "bytes=<first>-<last>"),
            {"name": "expires", "in": "query", "schema": {"type": "string"}},
            {"name": "signature", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": _answers(
            _200="the file",
            _206="the requested range",
            _304="not modified",
            _409="still receiving",
            _416="the range is outside the file",
            **_REFUSALS,
        ),
    },
}


def tus_paths(base_path: str) -> dict[str, dict[str, Any]]:
    """The OpenAPI path items of the tus endpoints under ``base_path``."""
    paths: dict[str, dict[str, Any]] = {}
    for template, methods in TUS_ROUTES:
        item = paths.setdefault(base_path + template, {})
        for method in methods:
            operation = dict(_OPERATIONS[(template, method)])
            operation["tags"] = [_TAG]
            operation["operationId"] = f"tus_{method.lower()}_{template.strip('/{}') or 'uploads'}"
            item[method.lower()] = operation
    return paths
