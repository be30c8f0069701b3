"""Property-based tests of the tus protocol (Hypothesis): random sequences of requests on one
upload, against the in-memory service (``TusHandler`` on a ``MemoryStore`` and a
``MemoryUploadRepository``). Creations with a length and deferred, PATCHes at right and wrong
offsets, with right and wrong checksums and with lengths declared late, HEADs, DELETEs, and
finals of partial uploads; the same generator also sends malformed header values.

After every step:
- the answer is one the tus specification allows for that request;
- an answer other than success changed nothing: the offset is where it was;
- a PATCH answered 204 moved the offset by exactly its body;
- the offset HEAD reports never decreases and never exceeds the length;
- the upload's state moved only along the documented transitions.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_handler import at, chunks, empty, make_world, tus
from upload_service.errors import ServiceError
from upload_service.tus.request import TusHeaders, TusRequest
from upload_service.uploads import UploadState

# What the tus 1.0.0 specification (core and its extensions) lets each request answer.
ALLOWED = {
    "POST": {201, 400, 403, 404, 412, 413, 415},
    "PATCH": {204, 400, 403, 404, 409, 410, 412, 413, 415, 460},
    "HEAD": {200, 400, 403, 404, 410, 412},
    # 409: a partial upload that an unassembled final names (docs/protocol.md)
    "DELETE": {204, 400, 403, 404, 409, 410, 412},
}
# The documented state transitions (README, "Upload states"), plus staying put.
TRANSITIONS = {
    UploadState.RECEIVING: {UploadState.VERIFYING, UploadState.TERMINATED, UploadState.EXPIRED},
    UploadState.VERIFYING: {UploadState.READY, UploadState.FAILED, UploadState.TERMINATED},
    UploadState.READY: {UploadState.TERMINATED},
    UploadState.FAILED: {UploadState.TERMINATED},
    UploadState.EXPIRED: set(),
    UploadState.TERMINATED: set(),
}


def _reachable(state: UploadState) -> set[UploadState]:
    """Every state ``state`` may reach, through any number of documented transitions (one
    request may take several: the PATCH of the last byte verifies the upload on the spot)."""
    found = {state}
    todo = [state]
    while todo:
        for following in TRANSITIONS[todo.pop()]:
            if following not in found:
                found.add(following)
                todo.append(following)
    return found


REACHABLE = {state: _reachable(state) for state in UploadState}
MAX_LENGTH = 2000

junk = st.text(alphabet=st.characters(codec="latin-1"), min_size=0, max_size=12)
offset_shift = st.sampled_from([0, 0, 0, -1, 1, 7, -7])


@dataclass(frozen=True)
class Patch:
    shift: int  # from the upload's offset: 0 is right
    size: int
    checksum: str  # "none", "right", "wrong"
    declare: bool  # declare the length (``Upload-Length``) with it, if still deferred


@dataclass(frozen=True)
class Head:
    pass


@dataclass(frozen=True)
class Delete:
    pass


@dataclass(frozen=True)
class Malformed:
    method: str
    header: str
    value: str


@dataclass(frozen=True)
class Final:
    """A final upload of the upload (as a partial) and a second, finished, partial."""

    pass


steps = st.lists(
    st.one_of(
        st.builds(
            Patch,
            shift=offset_shift,
            size=st.integers(0, 900),
            checksum=st.sampled_from(["none", "none", "right", "wrong"]),
            declare=st.booleans(),
        ),
        st.just(Head()),
        st.just(Delete()),
        st.builds(
            Malformed,
            method=st.sampled_from(["PATCH", "HEAD", "DELETE"]),
            header=st.sampled_from(
                [
                    "upload_offset",
                    "tus_resumable",
                    "upload_checksum",
                    "upload_length",
                    "content_type",
                ]
            ),
            value=junk,
        ),
        st.just(Final()),
    ),
    max_size=12,
)


@dataclass
class Observed:
    offset: int = 0
    state: UploadState = UploadState.RECEIVING
    length: int | None = None
    log: list[str] = field(default_factory=list)


def sha256_header(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


async def answer(method: str, call: object) -> tuple[int, dict[str, str]]:
    try:
        response = await call  # type: ignore[misc]
    except ServiceError as exc:
        status, headers, reason = exc.status, {}, str(exc)
    else:
        status, headers, reason = response.status, dict(response.headers), ""
    assert status in ALLOWED[method], f"{method} answered {status}: {reason}"
    return status, headers


async def run(partial: bool, length: int | None, plan: list[object]) -> None:
    world = make_world()
    handler = world.handler
    values = {"upload_length": str(length)} if length is not None else {"upload_defer_length": "1"}
    if partial:
        values["upload_concat"] = "partial"
    created = await handler.create(TusRequest(headers=tus(**values)), empty())
    assert created.status == 201
    upload_id = created.upload_id
    assert upload_id is not None
    seen = Observed(length=length)
    data = bytes(range(256)) * (MAX_LENGTH // 256 + 1)

    async def check() -> None:
        """The invariants, from the repository (the truth) and from HEAD."""
        upload = await world.repository.get(upload_id)
        assert upload is not None
        assert upload.state in REACHABLE[seen.state], (
            f"{seen.state} -> {upload.state}",
            seen.log,
        )
        assert upload.offset >= seen.offset, ("offset went back", seen.log)
        if upload.length is not None:
            assert upload.offset <= upload.length, seen.log
        if seen.length is not None:
            assert upload.length == seen.length, ("the length changed", seen.log)
        status, headers = await answer("HEAD", handler.head(TusRequest(upload_id, tus())))
        if status == 200:
            assert int(headers["Upload-Offset"]) == upload.offset, seen.log
        seen.offset, seen.state, seen.length = upload.offset, upload.state, upload.length

    for step in plan:
        seen.log.append(repr(step))
        before = seen.offset
        if isinstance(step, Patch):
            offset = max(0, before + step.shift)
            body = data[offset : offset + step.size]
            extra: dict[str, str] = {}
            if step.checksum != "none":
                extra["upload_checksum"] = sha256_header(
                    body if step.checksum == "right" else body + b"x"
                )
            if step.declare and seen.length is None:
                extra["upload_length"] = str(min(MAX_LENGTH, before + 2 * step.size))
            headers = TusHeaders(
                tus_resumable="1.0.0",
                content_type=at(offset).content_type,
                upload_offset=str(offset),
                content_length=str(len(body)),
                **extra,
            )
            status, answered = await answer(
                "PATCH", handler.patch(TusRequest(upload_id, headers), chunks(body, 256))
            )
            if status == 204:
                assert step.shift == 0 or offset == before, seen.log
                assert int(answered["Upload-Offset"]) == offset + len(body), seen.log
            await check()
            if status != 204:
                assert seen.offset == before, (f"a {status} moved the offset", seen.log)
        elif isinstance(step, Head):
            await check()
        elif isinstance(step, Delete):
            status, _ = await answer("DELETE", handler.delete(TusRequest(upload_id, tus())))
            await check()
            if status == 204:
                assert seen.state is UploadState.TERMINATED, seen.log
        elif isinstance(step, Malformed):
            good = {
                "tus_resumable": "1.0.0",
                "content_type": at(0).content_type,
                "upload_offset": str(before),
            }
            good[step.header] = step.value
            headers = TusHeaders(**good)
            request = TusRequest(upload_id, headers)
            if step.method == "PATCH":
                await answer("PATCH", handler.patch(request, chunks(b"", 256)))
            elif step.method == "HEAD":
                await answer("HEAD", handler.head(request))
            else:
                status, _ = await answer("DELETE", handler.delete(request))
                if status == 204:
                    assert step.header != "tus_resumable" or step.value == "1.0.0", seen.log
            await check()
        elif isinstance(step, Final):
            other = await handler.create(
                TusRequest(headers=tus(upload_length="3", upload_concat="partial")), empty()
            )
            assert other.upload_id is not None
            await handler.patch(TusRequest(other.upload_id, at(0)), chunks(b"abc"))
            concat = f"final;/files/{upload_id} /files/{other.upload_id}"
            status, _ = await answer(
                "POST", handler.create(TusRequest(headers=tus(upload_concat=concat)), empty())
            )
            if not partial:
                assert status == 400, seen.log  # only partial uploads make a final
            await check()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    partial=st.booleans(),
    length=st.one_of(st.none(), st.integers(0, MAX_LENGTH)),
    plan=steps,
)
def test_any_sequence_of_requests_keeps_the_protocol(
    partial: bool, length: int | None, plan: list[object]
) -> None:
    anyio.run(run, partial, length, plan)
