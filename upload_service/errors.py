"""The one error family of the service.

Every failure a client can cause or observe is a ``ServiceError`` carrying a stable ``code``, a one-line
``message`` and an HTTP ``status``. Backends translate their native errors (``FileNotFoundError``,
S3 ``NoSuchKey``) into this family at their own boundary; one exception handler renders it.
"""

from __future__ import annotations

from collections.abc import Mapping


class ServiceError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Unauthorized(ServiceError):
    """No credentials, or ones that do not hold (expired, bad signature, unknown key): 401 with
    the RFC 6750 challenge naming the reason."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, challenge: bool = True) -> None:
        # RFC 6750 section 3.1: a request without credentials gets the bare challenge
        value = 'Bearer realm="upload_service"'
        if challenge:
            reason = message.replace("\\", "").replace('"', "'")
            value += f', error="invalid_token", error_description="{reason}"'
        super().__init__(message, headers={"WWW-Authenticate": value})


class QuotaExceeded(ServiceError):
    """The owner's quota (unfinished uploads or stored bytes) would be exceeded."""

    status = 403
    code = "quota_exceeded"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "method_not_allowed"


class OffsetMismatch(ServiceError):
    status = 409
    code = "offset_mismatch"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Gone(ServiceError):
    status = 410
    code = "gone"


class PreconditionFailed(ServiceError):
    status = 412
    code = "unsupported_version"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class RangeNotSatisfiable(ServiceError):
    status = 416
    code = "range_not_satisfiable"


class Locked(ServiceError):
    status = 423
    code = "locked"


class Rejected(ServiceError):
    """A pre-create hook refused the creation: its 4xx status and one-line message."""

    status = 403
    code = "rejected"


class StorageError(ServiceError):
    """The store failed in a way the client cannot fix (disk full, I/O error)."""

    status = 507
    code = "storage_error"


class StorageFull(StorageError):
    """No space (or quota) is left where the bytes or the rows go: 507 Insufficient Storage, the
    upload itself intact; the client resumes once space is freed (HEAD gives the offset)."""

    code = "storage_full"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class StorageUnavailable(StorageError, Unavailable):
    """The store cannot be reached right now (connection refused, timeout, 5xx, throttling):
    a ``StorageError`` to the code that handles storage failures, a 503 with ``Retry-After`` to
    the client, who may simply try again."""

    status = 503
    code = "unavailable"
    RETRY_AFTER = "5"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": self.RETRY_AFTER})


class ClientGone(Exception):
    """The client went away mid-body. Not a ServiceError: there is nobody left to answer."""


class ConfigError(Exception):
    """Settings could not be loaded, or do not fit what is stored; the message names each
    offending variable. Not a ``ServiceError``: it stops start-up, it never answers a request."""
