"""The hooks that speak HTTP (httpx): the pre-create hook at a URL, and the webhook events are
POSTed to. Both sign their bodies (``signing``) with ``UPLOAD_HOOK_SECRET``."""

from __future__ import annotations

import json
import time

import httpx

from upload_service import __version__
from upload_service.errors import Rejected, ServiceError
from upload_service.events import NO_EVENTS, Events
from upload_service.hooks import signing
from upload_service.hooks.delivery import DeliveryFailed, event_body
from upload_service.hooks.pre_create import (
    MetadataLimits,
    PreCreate,
    amended,
    one_line,
    unavailable,
)
from upload_service.outbox import FailureReason, OutboxEvent
from upload_service.uploads import Metadata


class HttpPreCreate:
    """POST ``{"type": "pre-create", "upload": {...}}`` (signed when a secret is set). A 2xx
    goes on: with a JSON body ``{"metadata": {...}}`` the metadata is replaced. A 4xx refuses
    with its status and message (``{"message": "..."}`` or the body's first line)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        timeout: float,
        limits: MetadataLimits,
        secret: str = "",
        events: Events = NO_EVENTS,
    ) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self._limits = limits
        self._secret = secret
        self._events = events

    async def check(self, proposal: PreCreate) -> Metadata:
        body = json.dumps({"type": "pre-create", "upload": proposal.as_json()}).encode()
        headers = {"Content-Type": "application/json"}
        if self._secret:
            headers[signing.HEADER] = signing.sign(self._secret, int(time.time()), body)
        try:
            response = await self._client.post(
                self._url, content=body, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            self._events.pre_create_hook("unavailable")
            raise unavailable(str(exc) or exc.__class__.__name__) from exc
        try:
            return self._outcome(proposal, response)
        except ServiceError as exc:
            self._events.pre_create_hook("rejected" if exc.status < 500 else "unavailable")
            raise

    def _outcome(self, proposal: PreCreate, response: httpx.Response) -> Metadata:
        status = response.status_code
        if 400 <= status <= 499:
            raise Rejected(_message(response) or "rejected by the pre-create hook", status=status)
        if not 200 <= status <= 299:
            raise unavailable(f"it answered {status}")
        if not response.content.strip():
            self._events.pre_create_hook("allowed")
            return proposal.metadata
        try:
            answer = response.json()
        except ValueError:
            raise unavailable("its answer is not JSON") from None
        if not isinstance(answer, dict) or answer.get("metadata") is None:
            self._events.pre_create_hook("allowed")
            return proposal.metadata
        metadata = amended(answer["metadata"], self._limits)
        self._events.pre_create_hook("amended")
        return metadata


def _message(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return one_line(response.text)
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return one_line(answer["message"])
    return one_line(response.text)


class Webhook:
    """POST each event as JSON to a URL, signed (``Upload-Signature``); any 2xx delivers it."""

    def __init__(self, client: httpx.AsyncClient, url: str, *, secret: str, timeout: float) -> None:
        self._client = client
        self._url = url
        self._secret = secret
        self.timeout = timeout

    async def deliver(self, event: OutboxEvent) -> None:
        body = json.dumps(event_body(event), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"upload-service/{__version__}",
            "Upload-Event-Id": event.id,
            "Upload-Event-Type": event.type.value,
            signing.HEADER: signing.sign(self._secret, int(time.time()), body),
        }
        try:
            response = await self._client.post(
                self._url, content=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            detail = one_line(f"{exc.__class__.__name__}: {exc}")
            raise DeliveryFailed(_transport_reason(exc), detail) from exc
        status = response.status_code
        if not 200 <= status <= 299:
            raise DeliveryFailed(_status_reason(status), _answer_detail(response))


def _status_reason(status: int) -> FailureReason:
    if 300 <= status <= 399:
        return FailureReason.REDIRECT  # never followed: the client is built without redirects
    if 400 <= status <= 499:
        return FailureReason.CLIENT_ERROR
    if 500 <= status <= 599:
        return FailureReason.SERVER_ERROR
    return FailureReason.OTHER_STATUS


def _transport_reason(exc: httpx.HTTPError) -> FailureReason:
    if isinstance(exc, httpx.TimeoutException):  # ConnectTimeout among them
        return FailureReason.TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return FailureReason.CONNECT
    return FailureReason.TRANSPORT


def _answer_detail(response: httpx.Response) -> str:
    """A failed answer in the receiver's words, for the log: status, redirect target, body."""
    parts = [f"HTTP {response.status_code}"]
    location = response.headers.get("location")
    if location is not None:
        parts.append(f"Location {one_line(location)}")
    body = one_line(response.text)
    if body:
        parts.append(body)
    return ": ".join(parts)
