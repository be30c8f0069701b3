"""Properties (hypothesis): whatever the chunk boundaries, wherever the client breaks off, and
whichever checksummed chunks arrive corrupted, resuming from HEAD's offset and resending rejected
chunks ends in a stored file, a download and a reported sha256 equal to the source's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings
from tests.integrity_helpers import (
    ALGORITHMS,
    KiB,
    MiB,
    Running,
    checksum,
    patch_then_disconnect,
    random_bytes,
    running,
    settled,
    sha256_hex,
)
from tests.tus_http_helpers import create, head, patch, reason, snapshot, stored_bytes

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    # One app serves every example of a test; each example works on an upload of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
async def served(data_dir: Path, database_url: str) -> AsyncIterator[Running]:
    # The smallest write buffer, so bodies cross many coalesced writes; checkpoints by bytes only.
    config = make_settings(
        data_dir, database_url, write_buffer=64 * KiB, checkpoint_bytes=MiB, checkpoint_seconds=1e9
    )
    async with running(config) as app:
        yield app


def split(data: bytes, piece: int) -> list[bytes]:
    return [data[at : at + piece] for at in range(0, len(data), piece)]


sizes = st.one_of(st.integers(1, 8 * KiB), st.integers(8 * KiB, MiB))


@st.composite
def boundaries(draw: st.DrawFn, size: int) -> list[int]:
    """Chunk ends: sorted, distinct, the last one ``size``."""
    cuts = draw(st.lists(st.integers(1, size), max_size=6)) if size > 1 else []
    return sorted({*cuts, size})


# -- random boundaries and disconnects, no checksums --------------------------------------------


@dataclass(frozen=True)
class Chunk:
    end: int
    broken_after: float | None  # share of the chunk sent before the client vanishes
    piece: int  # size of the ASGI messages the broken request arrives in


@dataclass(frozen=True)
class Plan:
    size: int
    seed: int
    chunks: list[Chunk]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    size = draw(sizes)
    chunks = [
        Chunk(
            end=end,
            broken_after=draw(st.none() | st.floats(0, 1)),
            piece=draw(st.integers(1, 200 * KiB)),
        )
        for end in draw(boundaries(size))
    ]
    return Plan(size=size, seed=draw(st.integers(0, 2**16)), chunks=chunks)


async def offset_of(served: Running, upload_id: str) -> int:
    response = await head(served.client, upload_id)
    assert response.status_code == 200, response.text
    return int(response.headers["Upload-Offset"])


@EXAMPLES
@given(plan=plans())
async def test_any_split_and_any_disconnect_resume_to_the_same_file(
    served: Running, plan: Plan
) -> None:
    data = random_bytes(plan.size, plan.seed)
    client = served.client
    upload_id = await create(client, plan.size)
    offset = 0
    for chunk in plan.chunks:
        if chunk.broken_after is not None and offset < chunk.end:
            sent = data[offset : offset + round((chunk.end - offset) * chunk.broken_after)]
            await patch_then_disconnect(served.app, upload_id, offset, split(sent, chunk.piece))
            resumed = await offset_of(served, upload_id)
            # Every byte that arrived is kept, and it is the source's.
            assert resumed == offset + len(sent)
            assert await stored_bytes(served.services, upload_id) == data[:resumed]
            offset = resumed
        response = await patch(client, upload_id, offset, data[offset : chunk.end])
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
        assert offset == chunk.end

    shown = await settled(served.app, client, upload_id)
    assert shown["state"] == "ready"
    assert shown["sha256"] == sha256_hex(data)
    assert await stored_bytes(served.services, upload_id) == data
    assert (await client.get(f"/files/{upload_id}")).content == data


# -- checksummed chunks, some corrupted ---------------------------------------------------------

FAULTS = ("flipped byte", "short body", "wrong digest", "disconnect")


@dataclass(frozen=True)
class Attempt:
    fault: str
    at: float  # where in the chunk the fault strikes


@dataclass(frozen=True)
class CheckedChunk:
    end: int
    algorithm: str
    failures: list[Attempt]  # rejected attempts before the chunk goes through


@dataclass(frozen=True)
class CheckedPlan:
    size: int
    seed: int
    chunks: list[CheckedChunk]


@st.composite
def checked_plans(draw: st.DrawFn) -> CheckedPlan:
    size = draw(sizes)
    attempts = st.builds(Attempt, fault=st.sampled_from(FAULTS), at=st.floats(0, 1))
    chunks = [
        CheckedChunk(
            end=end,
            algorithm=draw(st.sampled_from(ALGORITHMS)),
            failures=draw(st.lists(attempts, max_size=2)),
        )
        for end in draw(boundaries(size))
    ]
    return CheckedPlan(size=size, seed=draw(st.integers(0, 2**16)), chunks=chunks)


@EXAMPLES
@given(plan=checked_plans())
async def test_corrupted_checksummed_chunks_are_rejected_and_resent(
    served: Running, plan: CheckedPlan
) -> None:
    data = random_bytes(plan.size, plan.seed)
    client, services = served.client, served.services
    upload_id = await create(client, plan.size)
    offset = 0
    for chunk in plan.chunks:
        body = data[offset : chunk.end]
        header = checksum(chunk.algorithm, body)
        for attempt in chunk.failures:
            before = await snapshot(services, upload_id)
            at = min(int(len(body) * attempt.at), len(body) - 1)
            if attempt.fault == "disconnect":
                sent = body[:at]
                await patch_then_disconnect(
                    served.app,
                    upload_id,
                    offset,
                    split(sent, 64 * KiB),
                    {"Upload-Checksum": header},
                )
            else:
                if attempt.fault == "flipped byte":
                    bad, stated = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :], header
                elif attempt.fault == "short body":
                    bad, stated = body[:at], header
                else:
                    bad, stated = body, checksum(chunk.algorithm, body + b"\0")
                response = await patch(client, upload_id, offset, bad, Upload_Checksum=stated)
                assert response.status_code == 460, response.text
                assert reason(response).startswith(f"{chunk.algorithm} of the request body")
            # Nothing of a rejected or broken-off checksummed request remains.
            assert await snapshot(services, upload_id) == before
            assert await offset_of(served, upload_id) == offset

        response = await patch(client, upload_id, offset, body, Upload_Checksum=header)
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
        assert offset == chunk.end
        assert await stored_bytes(services, upload_id) == data[:offset]

    shown = await settled(served.app, client, upload_id)
    assert shown["state"] == "ready"
    assert shown["sha256"] == sha256_hex(data)
    assert (await client.get(f"/files/{upload_id}")).content == data
