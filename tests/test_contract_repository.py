"""One contract suite for the ``UploadRepository`` (and its ``Outbox``), run against the memory
repository, SQLite and PostgreSQL alike (``backend``). The few tests that reach under the contract
(rows written or read by SQL, a driver error provoked) run on the SQL backends only (``databases``).

Every transition is a compare-and-set: it applies only from the state (or offset) it expects and
otherwise raises ``Conflict`` leaving the row as it was. Driver failures surface as
``Unavailable`` (503 with ``Retry-After``), never as a raw driver error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import anyio
import pytest
from sqlalchemy import select, update

from tests.conftest import Databases, empty_database
from upload_service.db import repository as db_repository
from upload_service.db.base import PageKey, Quota, UploadQuery, UploadRepository, Usage
from upload_service.db.engine import create_engine, create_sessionmaker, create_transactions
from upload_service.db.memory import MemoryUploadRepository
from upload_service.db.models import OutboxRow, UploadPartRow
from upload_service.db.outbox import outbox_row
from upload_service.db.repository import SqlUploadRepository
from upload_service.errors import Conflict, QuotaExceeded, Unauthorized, Unavailable
from upload_service.outbox import DeliveryStatus, EventType, FailureReason, Outbox
from upload_service.tickets import Ticket, TicketRepository, TicketUsedUp
from upload_service.uploads import Upload, UploadState, VideoInfo

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
ID = "0123456789abcdef0123456789abcdef"
PARTS = ("1" * 32, "2" * 32)
RECEIVING = (UploadState.RECEIVING,)


def new_upload(upload_id: str = ID, length: int | None = 10, **values: object) -> Upload:
    upload = Upload(
        id=upload_id,
        length=length,
        offset=0,
        received=0,
        state=UploadState.RECEIVING,
        metadata={"filename": b"a.mp4", "flag": None},
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + timedelta(hours=1),
        storage_ref="multipart-7",
    )
    return replace(upload, **values)  # type: ignore[arg-type]


class Backend(Protocol):
    def repository(self, *, events: bool = False) -> UploadRepository:
        """A repository over the backend's one state, writing events or not: for SQL a new
        engine (another process or replica on the same database), for memory the same state
        (one process's)."""
        ...


class MemoryBackend:
    def __init__(self) -> None:
        self._repository = MemoryUploadRepository()

    def repository(self, *, events: bool = False) -> UploadRepository:
        return self._repository.sharing(events=events)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """A migrated, empty database of the kind (None: memory). Not async: the migrations run
    their own event loop."""
    kind: str = request.param
    return None if kind == "memory" else empty_database(request, kind, tmp_path)


@pytest.fixture
async def backend(backend_url: str | None) -> AsyncIterator[Backend]:
    if backend_url is None:
        yield MemoryBackend()
        return
    databases = Databases(backend_url)
    try:
        yield databases
    finally:
        await databases.aclose()


@pytest.fixture
def repo(backend: Backend) -> UploadRepository:
    return backend.repository()


async def row(repo: UploadRepository, upload_id: str = ID) -> Upload:
    upload = await repo.get(upload_id)
    assert upload is not None
    return upload


async def test_add_and_get_round_trip_every_field(repo: UploadRepository) -> None:
    upload = new_upload()
    await repo.add(upload)
    stored = await row(repo)
    assert stored == replace(upload, state_changed_at=T0)
    assert await repo.get("f" * 32) is None
    assert await repo.get_many((ID, "f" * 32)) == {ID: stored}


async def test_the_owner_round_trips_and_usage_counts_what_the_owner_holds(
    repo: UploadRepository,
) -> None:
    await repo.add(new_upload(owner="alice"))
    assert (await row(repo)).owner == "alice"
    await repo.add(new_upload("1" * 32, length=None, owner="alice"))  # deferred: by its offset
    await repo.advance("1" * 32, expected=0, offset=3, now=T1, expires_at=None)
    await repo.add(new_upload("2" * 32, length=7, state=UploadState.READY, owner="alice"))
    await repo.add(new_upload("3" * 32, length=100, owner="alice"))
    await repo.terminate("3" * 32, T1)  # ended: holds nothing
    await repo.add(new_upload("4" * 32, length=50, owner="bob"))
    await repo.add(new_upload("5" * 32, length=50))  # an open service's upload: nobody's
    assert await repo.usage("alice") == Usage(unfinished=2, bytes=10 + 3 + 7)
    assert await repo.usage("bob") == Usage(unfinished=1, bytes=50)
    assert await repo.usage("carol") == Usage()


async def test_add_with_a_quota_refuses_past_it_and_inserts_nothing(
    repo: UploadRepository,
) -> None:
    quota = Quota(uploads=2, bytes=25)
    await repo.add(new_upload(owner="alice"), quota)
    with pytest.raises(QuotaExceeded, match="bytes"):
        await repo.add(new_upload("1" * 32, length=16, owner="alice"), quota)
    await repo.add(new_upload("2" * 32, length=15, owner="alice"), quota)
    with pytest.raises(QuotaExceeded, match="unfinished uploads"):
        await repo.add(new_upload("3" * 32, length=None, owner="alice"), quota)
    assert await repo.get("1" * 32) is None
    assert await repo.get("3" * 32) is None
    await repo.add(new_upload("4" * 32, owner="bob"), quota)  # quotas are per owner
    await repo.add(new_upload("5" * 32), quota)  # no owner, no quota


async def test_quota_checked_creations_of_one_owner_are_serialised(
    backend: Backend,
) -> None:
    """Creations racing on two engines (two replicas; on memory, tasks): the check and the
    insert are one step, so exactly the quota's worth gets in."""
    repos = [backend.repository(), backend.repository()]
    quota = Quota(uploads=3)
    outcomes: list[bool] = []

    async def create(index: int) -> None:
        try:
            await repos[index % 2].add(new_upload(f"{index:032x}", owner="alice"), quota)
        except QuotaExceeded:
            outcomes.append(False)
        else:
            outcomes.append(True)

    async with anyio.create_task_group() as tasks:
        for index in range(8):
            tasks.start_soon(create, index)
    assert sorted(outcomes) == [False] * 5 + [True] * 3
    assert await repos[0].usage("alice") == Usage(unfinished=3, bytes=30)


async def _race(
    count: int,
    step: Callable[[int], Awaitable[object]],
    refusal: type[Exception] = QuotaExceeded,
) -> list[bool]:
    """Run ``step(index)`` ``count`` times at once; which were admitted (not ``refusal``)."""
    outcomes: list[bool] = []

    async def one(index: int) -> None:
        try:
            await step(index)
        except refusal:
            outcomes.append(False)
        else:
            outcomes.append(True)

    async with anyio.create_task_group() as tasks:
        for index in range(count):
            tasks.start_soon(one, index)
    return outcomes


async def test_bytes_of_unknown_length_count_as_they_are_committed_and_racing_commits_are_serialised(
    backend: Backend,
) -> None:
    """Commits of deferred uploads of one owner racing on two engines (on memory, tasks): the
    quota is checked with each commit, in its transaction, so exactly what fits is committed."""
    repos = [backend.repository(), backend.repository()]
    quota = Quota(bytes=100)
    ids = [f"{index:032x}" for index in range(8)]
    for upload_id in ids:
        await repos[0].add(new_upload(upload_id, length=None, owner="alice"), quota)

    async def commit(index: int) -> None:
        await repos[index % 2].advance(
            ids[index], expected=0, offset=30, now=T1, expires_at=None, quota=quota
        )

    assert sorted(await _race(8, commit)) == [False] * 5 + [True] * 3
    assert (await repos[0].usage("alice")).bytes == 90
    refused = [
        upload for upload in (await repos[0].get_many(tuple(ids))).values() if not upload.offset
    ]
    assert len(refused) == 5  # a refused commit changed nothing
    # at the quota, no new upload of unknown length is admitted (it has no byte to grow by)
    await repos[0].advance(
        refused[0].id, expected=0, offset=10, now=T1, expires_at=None, quota=quota
    )
    with pytest.raises(QuotaExceeded, match="none left"):
        await repos[0].add(new_upload("f" * 32, length=None, owner="alice"), quota)
    await repos[0].add(
        new_upload("e" * 32, length=0, owner="alice", state=UploadState.VERIFYING), quota
    )
    # an upload of known length counted its length at creation: its commits grow nothing
    await repos[0].add(new_upload("d" * 32, length=0, owner="bob"), Quota(bytes=10))
    known = new_upload("c" * 32, length=10, owner="bob")
    await repos[0].add(known, Quota(bytes=10))
    await repos[0].advance(
        known.id, expected=0, offset=10, now=T1, expires_at=None, quota=Quota(bytes=10)
    )


async def test_declaring_a_length_is_checked_against_the_quota_serialised(
    backend: Backend,
) -> None:
    repos = [backend.repository(), backend.repository()]
    quota = Quota(bytes=100)
    ids = [f"{index:032x}" for index in range(6)]
    for upload_id in ids:
        await repos[0].add(new_upload(upload_id, length=None, owner="alice"), quota)
        await repos[0].advance(upload_id, expected=0, offset=5, now=T1, expires_at=None)

    async def declare(index: int) -> None:
        await repos[index % 2].declare_length(ids[index], 35, T1, quota)

    # 30 bytes stored; each length adds 30 more (its offset counted already)
    assert sorted(await _race(6, declare)) == [False] * 4 + [True] * 2
    assert (await repos[0].usage("alice")).bytes == 30 + 2 * 30
    lengths = sorted(
        str(upload.length) for upload in (await repos[0].get_many(tuple(ids))).values()
    )
    assert lengths == ["35", "35", "None", "None", "None", "None"]  # a refusal changed nothing


async def test_finals_count_as_unfinished_uploads_and_by_their_length_serialised(
    backend: Backend,
) -> None:
    repos = [backend.repository(), backend.repository()]

    async def final(index: int, length: int | None, quota: Quota) -> None:
        parts = (f"a{index:031x}", f"b{index:031x}")
        for part in parts:
            ready = new_upload(part, concat="partial", owner="alice", state=UploadState.READY)
            await repos[0].add(ready)
        upload = new_upload(f"{index:032x}", length, concat="final", parts=parts, owner="alice")
        await repos[index % 2].add_final(upload, quota)

    # the parts are complete: the finals are the owner's only unfinished uploads
    assert (
        sorted(await _race(5, lambda index: final(index, 20, Quota(uploads=2))))
        == [False] * 3 + [True] * 2
    )
    usage = await repos[0].usage("alice")
    assert usage == Usage(unfinished=2, bytes=100 + 2 * 20)  # each final counts in full
    with pytest.raises(QuotaExceeded, match="bytes stored"):
        await final(7, 20, Quota(bytes=179))
    with pytest.raises(QuotaExceeded, match="none left"):
        await final(8, None, Quota(bytes=180))


async def test_assembling_a_final_of_unknown_length_is_checked_against_the_quota(
    repo: UploadRepository,
) -> None:
    for part in PARTS:
        await repo.add(new_upload(part, length=None, concat="partial", owner="alice"))
        await repo.advance(part, expected=0, offset=40, now=T1, expires_at=None)
    final = new_upload(length=None, concat="final", parts=PARTS, owner="alice")
    await repo.add_final(final, Quota(bytes=100))
    with pytest.raises(QuotaExceeded):
        await repo.assembled(ID, 80, T1, Quota(bytes=159))  # 80 stored, 80 more
    assert (await row(repo)).state is UploadState.RECEIVING  # nothing changed
    assembled = await repo.assembled(ID, 80, T1, Quota(bytes=160))
    assert (assembled.state, assembled.length) == (UploadState.VERIFYING, 80)


async def test_advance_is_a_compare_and_set_on_the_offset(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    moved = await repo.advance(ID, expected=0, offset=4, now=T1, expires_at=None)
    assert (moved.offset, moved.received, moved.updated_at) == (4, 4, T1)
    with pytest.raises(Conflict):
        await repo.advance(ID, expected=0, offset=9, now=T1, expires_at=None)
    assert (await row(repo)).offset == 4
    whole = await repo.advance(ID, expected=4, offset=10, now=T1, expires_at=None)
    assert whole.state is UploadState.RECEIVING  # reaching the length completes nothing


async def test_complete_only_when_every_byte_is_committed(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    with pytest.raises(Conflict):
        await repo.complete(ID, T1)
    await repo.advance(ID, expected=0, offset=10, now=T1, expires_at=None)
    done = await repo.complete(ID, T1)
    assert (done.state, done.completed_at, done.expires_at) == (UploadState.VERIFYING, T1, None)
    with pytest.raises(Conflict):  # once only
        await repo.complete(ID, T1)
    with pytest.raises(Conflict):  # and the offset of a finished upload never moves again
        await repo.advance(ID, expected=10, offset=10, now=T1, expires_at=None)


async def test_declare_length_only_while_unknown_and_not_below_the_offset(
    repo: UploadRepository,
) -> None:
    await repo.add(new_upload(length=None))
    await repo.advance(ID, expected=0, offset=6, now=T1, expires_at=None)
    with pytest.raises(Conflict):
        await repo.declare_length(ID, 5, T1)
    assert (await repo.declare_length(ID, 8, T1)).length == 8
    with pytest.raises(Conflict):
        await repo.declare_length(ID, 9, T1)
    assert (await row(repo)).length == 8


async def test_ready_only_from_verifying(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    with pytest.raises(Conflict):
        await repo.mark_ready(ID, "ab" * 32, T1)
    await repo.advance(ID, expected=0, offset=10, now=T1, expires_at=None)
    await repo.complete(ID, T1)
    ready = await repo.mark_ready(ID, "ab" * 32, T1)
    assert (ready.state, ready.sha256) == (UploadState.READY, "ab" * 32)


async def test_ready_keeps_what_was_found_in_a_video(repo: UploadRepository) -> None:
    video = VideoInfo(
        container="mov,mp4,m4a,3gp,3g2,mj2",
        duration=2.5,
        video_codec="h264",
        audio_codec=None,
        width=320,
        height=240,
        frame_rate=29.97,
        bit_rate=123_456,
    )
    await repo.add(new_upload())
    await repo.add(new_upload("1" * 32))
    for upload_id in (ID, "1" * 32):
        await repo.advance(upload_id, expected=0, offset=10, now=T1, expires_at=None)
        await repo.complete(upload_id, T1)
    assert (await repo.mark_ready(ID, "ab" * 32, T1, video=video)).video == video
    assert (await row(repo)).video == video
    assert (await repo.mark_ready("1" * 32, "ab" * 32, T1)).video is None
    assert (await row(repo, "1" * 32)).video is None


def page_ids(uploads: list[Upload]) -> list[str]:
    return [upload.id for upload in uploads]


async def test_list_page_is_newest_first_filtered_and_continues_after_its_key(
    repo: UploadRepository,
) -> None:
    # five uploads a second apart, two created in the same instant (the id orders them)
    ids = [f"{n:032x}" for n in range(6)]
    moments = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)] + [
        T0 + timedelta(seconds=3)
    ] * 2
    for upload_id, moment in zip(ids, moments, strict=False):
        await repo.add(new_upload(upload_id, created_at=moment, updated_at=moment, owner="alice"))
    await repo.add(new_upload(ids[5], created_at=T1, updated_at=T1, owner="bob"))
    await repo.terminate(ids[1], T1)

    everyone = await repo.list_page(UploadQuery(limit=10))
    assert page_ids(everyone) == [ids[4], ids[3], ids[2], ids[5], ids[1], ids[0]]
    alice = UploadQuery(owner="alice", limit=2)
    first = await repo.list_page(alice)
    assert page_ids(first) == [ids[4], ids[3]]  # same instant: the larger id first
    key = PageKey(first[-1].created_at, first[-1].id)
    second = await repo.list_page(replace(alice, after=key))
    assert page_ids(second) == [ids[2], ids[1]]
    key = PageKey(second[-1].created_at, second[-1].id)
    assert page_ids(await repo.list_page(replace(alice, after=key))) == [ids[0]]
    assert page_ids(await repo.list_page(UploadQuery(owner="carol"))) == []

    terminated = UploadQuery(owner="alice", states=(UploadState.TERMINATED,))
    assert page_ids(await repo.list_page(terminated)) == [ids[1]]
    live = UploadQuery(owner="alice", states=(UploadState.RECEIVING, UploadState.READY))
    assert page_ids(await repo.list_page(live)) == [ids[4], ids[3], ids[2], ids[0]]
    # created_after is inclusive, created_before exclusive (ranges tile); any offset, as UTC
    ranged = UploadQuery(
        created_after=(T0 + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=2))),
        created_before=T0 + timedelta(seconds=3),
    )
    assert page_ids(await repo.list_page(ranged)) == [ids[2], ids[5], ids[1]]


async def test_terminate_only_from_a_live_state(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    assert (await repo.terminate(ID, T1)).state is UploadState.TERMINATED
    with pytest.raises(Conflict):
        await repo.terminate(ID, T1)
    with pytest.raises(Conflict):
        await repo.advance(ID, expected=0, offset=1, now=T1, expires_at=None)


async def test_fail_only_from_the_states_named(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    with pytest.raises(Conflict):
        await repo.fail(ID, "why", T1, only_from=(UploadState.VERIFYING,))
    failed = await repo.fail(ID, "why", T1, only_from=(UploadState.RECEIVING,))
    assert (failed.state, failed.failure, failed.state_changed_at) == (
        UploadState.FAILED,
        "why",
        T1,
    )


async def test_expire_only_past_the_expiry(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    with pytest.raises(Conflict):
        await repo.expire(ID, T0)
    later = T0 + timedelta(hours=2)
    assert [upload.id for upload in await repo.list_expired(later)] == [ID]
    assert (await repo.expire(ID, later)).state is UploadState.EXPIRED
    assert await repo.list_expired(later) == []
    assert [upload.id for upload in await repo.list_ended(later + timedelta(seconds=1))] == [ID]


async def test_force_offset_compares_the_expected_offset(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    await repo.advance(ID, expected=0, offset=8, now=T1, expires_at=None)
    with pytest.raises(Conflict):
        await repo.force_offset(ID, expected=5, offset=3, now=T1)
    lowered = await repo.force_offset(ID, expected=8, offset=3, now=T1)
    assert (lowered.offset, lowered.received) == (3, 3)


async def test_progress_never_moves_the_offset(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    await repo.set_received(ID, 7)
    stored = await row(repo)
    assert (stored.offset, stored.received) == (0, 7)


async def test_a_final_records_its_parts_in_one_transaction(repo: UploadRepository) -> None:
    """A final's parts are recorded with it, or nothing is. (This test used to check that a
    second final naming the same parts was refused, "claimed"; a part may now form several
    finals, see ``test_a_part_may_form_several_finals``.)"""
    for part in PARTS:
        await repo.add(new_upload(part, concat="partial"))
    final = new_upload("f" * 32, length=20, concat="final", parts=PARTS)
    await repo.add_final(final)
    assert {(await row(repo, part)).finals for part in PARTS} == {(final.id,)}
    assert [upload.id for upload in await repo.list_finals_waiting()] == [final.id]
    ended = "3" * 32
    await repo.add(new_upload(ended, concat="partial"))
    await repo.terminate(ended, T1)
    await repo.add(new_upload("4" * 32))  # not a partial upload
    for refused_part in (ended, "4" * 32, "5" * 32):
        again = new_upload("e" * 32, length=20, concat="final", parts=(PARTS[0], refused_part))
        with pytest.raises(Conflict, match=f"partial upload {refused_part} ended meanwhile"):
            await repo.add_final(again)
        assert await repo.get(again.id) is None  # nothing of the refused final was inserted
    assert (await row(repo, PARTS[0])).finals == (final.id,)  # nor half of its parts
    assembled = await repo.assembled(final.id, 20, T1)
    assert (assembled.state, assembled.offset, assembled.length) == (UploadState.VERIFYING, 20, 20)


async def test_a_part_may_form_several_finals(repo: UploadRepository) -> None:
    """Finals A+B and C+B: B lists both, oldest first, wherever it is read; a final that ends
    leaves the list."""
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    for part in (a, b, c):
        await repo.add(new_upload(part, length=5, concat="partial", state=UploadState.READY))
    first = new_upload("1f" * 16, length=10, concat="final", parts=(a, b))
    second = new_upload("2f" * 16, length=10, concat="final", parts=(c, b), created_at=T1)
    await repo.add_final(second)  # inserted first, created later: listed by creation
    await repo.add_final(first)
    assert (await row(repo, b)).finals == (first.id, second.id)
    assert (await row(repo, a)).finals == (first.id,)
    assert (await row(repo, c)).finals == (second.id,)
    assert (await row(repo, first.id)).finals == ()  # a final is nobody's part
    many = await repo.get_many((a, b, c))
    assert {part: upload.finals for part, upload in many.items()} == {
        a: (first.id,),
        b: (first.id, second.id),
        c: (second.id,),
    }
    listed = await repo.list_page(UploadQuery(limit=10))
    assert {upload.id: upload.finals for upload in listed}[b] == (first.id, second.id)
    await repo.terminate(first.id, T1)  # an unassembled final ended: B is second's only
    assert (await row(repo, b)).finals == (second.id,)
    assert (await row(repo, a)).finals == ()
    await repo.assembled(second.id, 10, T1)  # assembled finals stay
    assert (await row(repo, b)).finals == (second.id,)
    await repo.fail(second.id, "why", T1, only_from=(UploadState.VERIFYING,))
    assert (await row(repo, b)).finals == ()


async def test_a_part_is_not_terminated_while_a_final_waits_for_it(
    repo: UploadRepository,
) -> None:
    part, other = PARTS
    for upload_id in PARTS:
        await repo.add(new_upload(upload_id, concat="partial", state=UploadState.READY))
    waiting = new_upload("f" * 32, length=20, concat="final", parts=(part,))
    also = new_upload("e" * 32, length=20, concat="final", parts=(other, part), created_at=T1)
    await repo.add_final(waiting)
    await repo.add_final(also)
    with pytest.raises(Conflict, match=f"belongs to final upload {waiting.id}, not assembled"):
        await repo.terminate(part, T1)
    assert (await row(repo, part)).state is UploadState.READY  # rolled back
    await repo.assembled(waiting.id, 20, T1)
    with pytest.raises(Conflict, match=f"belongs to final upload {also.id}, not assembled"):
        await repo.terminate(part, T1)
    await repo.terminate(also.id, T1)  # the last waiting final let go of it
    assert (await repo.terminate(part, T1)).state is UploadState.TERMINATED
    assert (await row(repo, waiting.id)).state is UploadState.VERIFYING  # the final is its own


async def test_an_expired_part_names_every_final_that_waited_for_it(
    repo: UploadRepository,
) -> None:
    part, other = PARTS
    await repo.add(new_upload(part, concat="partial"))
    await repo.add(new_upload(other, concat="partial", state=UploadState.READY))
    first = new_upload("f" * 32, length=20, concat="final", parts=(part,))
    second = new_upload("e" * 32, length=20, concat="final", parts=(other, part), created_at=T1)
    unrelated = new_upload("d" * 32, length=10, concat="final", parts=(other,))
    for final in (first, second, unrelated):
        await repo.add_final(final)
    later = T0 + timedelta(hours=2)
    expired = await repo.expire(part, later)
    assert expired.state is UploadState.EXPIRED
    assert expired.finals == (first.id, second.id)
    assert (await row(repo, other)).finals == (unrelated.id, second.id)


async def test_ended_parts_are_kept_while_a_receiving_final_names_them(
    repo: UploadRepository,
) -> None:
    part, other = PARTS
    await repo.add(new_upload(part, concat="partial"))
    await repo.add(new_upload(other, concat="partial", state=UploadState.READY))
    waiting = new_upload("f" * 32, length=20, concat="final", parts=(other, part))
    assembled = new_upload("e" * 32, length=10, concat="final", parts=(other,))
    await repo.add_final(waiting)
    await repo.add_final(assembled)
    await repo.assembled(assembled.id, 10, T1)
    later = T0 + timedelta(hours=2)
    await repo.expire(part, later)
    purge_time = later + timedelta(seconds=1)
    assert await repo.list_ended(purge_time) == []  # the waiting final still names it
    await repo.fail(waiting.id, f"partial upload {part} is expired", later, only_from=RECEIVING)
    assert {upload.id for upload in await repo.list_ended(purge_time)} == {part, waiting.id}
    # a part of assembled finals only is forgotten once it ended
    await repo.terminate(other, later)
    assert other in {upload.id for upload in await repo.list_ended(purge_time)}


async def test_forget_drops_the_records_of_parts(databases: Databases) -> None:
    """SQL only: it reads the ``upload_parts`` rows themselves (on every backend, the finals read
    back after ``forget`` are checked by ``test_forget_drops_a_forgotten_final_from_its_parts``)."""
    repo = databases.repository()
    part, other = PARTS
    for upload_id in PARTS:
        await repo.add(new_upload(upload_id, concat="partial", state=UploadState.READY))
    final = new_upload("f" * 32, length=20, concat="final", parts=(part, other))
    await repo.add_final(final)
    await repo.terminate(final.id, T1)
    await repo.terminate(part, T1)
    assert await _part_records(databases) == {(final.id, part), (final.id, other)}
    await repo.forget(part)
    assert await _part_records(databases) == {(final.id, other)}
    await repo.forget(final.id)
    assert await _part_records(databases) == set()
    assert (await row(repo, other)).finals == ()


async def _part_records(databases: Databases) -> set[tuple[str, str]]:
    engine = databases.engine()
    async with engine.connect() as connection:
        result = await connection.execute(select(UploadPartRow.final_id, UploadPartRow.part_id))
        return {(final_id, part_id) for final_id, part_id in result}


async def test_forget_drops_a_forgotten_final_from_its_parts(repo: UploadRepository) -> None:
    part, other = PARTS
    for upload_id in PARTS:
        await repo.add(new_upload(upload_id, concat="partial", state=UploadState.READY))
    final = new_upload("f" * 32, length=20, concat="final", parts=(part, other))
    await repo.add_final(final)
    await repo.assembled(final.id, 20, T1)
    await repo.terminate(part, T1)
    assert (await row(repo, other)).finals == (final.id,)
    await repo.forget(part)
    assert await repo.get(part) is None
    assert (await row(repo, other)).finals == (final.id,)
    await repo.fail(final.id, "why", T1, only_from=(UploadState.VERIFYING,))
    await repo.forget(final.id)
    assert await repo.get(final.id) is None
    assert (await row(repo, other)).finals == ()
    await repo.add(new_upload(final.id, length=20))  # the id is free again, and names no part
    assert (await row(repo, other)).finals == ()


async def test_two_finals_of_the_same_parts_each_count_in_full(repo: UploadRepository) -> None:
    await repo.add(new_upload(PARTS[0], length=10, concat="partial", owner="alice"))
    await repo.add(new_upload(PARTS[1], length=5, concat="partial", owner="alice"))
    for final_id, parts in (("f" * 32, PARTS), ("e" * 32, PARTS[::-1])):
        final = new_upload(final_id, length=15, concat="final", parts=parts, owner="alice")
        await repo.add_final(final)
    assert await repo.usage("alice") == Usage(unfinished=4, bytes=10 + 5 + 15 + 15)
    for final_id in ("f" * 32, "e" * 32):
        await repo.assembled(final_id, 15, T1)
    assert await repo.usage("alice") == Usage(unfinished=2, bytes=10 + 5 + 15 + 15)


async def test_add_final_and_the_parts_termination_racing(backend: Backend) -> None:
    """A final created on one engine while its part is terminated on another (two replicas; on
    memory, two tasks):
    exactly one of the two happens, in either order, so no final waits for a part that is gone."""
    creating, terminating = backend.repository(), backend.repository()
    for index in range(12):
        part = f"{index:032x}"
        await creating.add(new_upload(part, concat="partial", state=UploadState.READY))
        final = new_upload(f"f{index:031x}", length=10, concat="final", parts=(part,))
        created, terminated = await _race_pair(
            creating.add_final(final), terminating.terminate(part, T1), swap=index % 2 == 1
        )
        assert created != terminated, (created, terminated)
        stored_final = await creating.get(final.id)
        state = (await row(creating, part)).state
        if created:
            assert stored_final is not None
            assert state is UploadState.READY
        else:
            assert stored_final is None
            assert state is UploadState.TERMINATED


async def _race_pair(
    first: Coroutine[Any, Any, object], second: Coroutine[Any, Any, object], *, swap: bool
) -> tuple[bool, bool]:
    """Run both at once (started in the other order with ``swap``): did each succeed, or end in
    ``Conflict``?"""
    outcomes: list[bool] = [False, False]

    async def run(index: int, work: Coroutine[Any, Any, object]) -> None:
        try:
            await work
        except Conflict:
            return
        outcomes[index] = True

    async with anyio.create_task_group() as group:
        for index in (1, 0) if swap else (0, 1):
            group.start_soon(run, index, (first, second)[index])
    return outcomes[0], outcomes[1]


async def test_commits_of_a_replaced_lock_holder_are_refused(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    assert await repo.claim("f" * 32, 5) is None
    first = await repo.claim(ID, 5)
    assert first is not None
    assert first.fence == 5
    await repo.advance(ID, expected=0, offset=2, now=T1, expires_at=None, fence=5)
    newer = await repo.claim(ID, 9)  # a newer holder (another replica) took the lock over
    assert newer is not None
    assert newer.fence == 9
    with pytest.raises(Conflict):  # the stale holder can no longer move the offset
        await repo.advance(ID, expected=2, offset=4, now=T1, expires_at=None, fence=5)
    with pytest.raises(Conflict):
        await repo.force_offset(ID, expected=2, offset=0, now=T1, fence=5)
    with pytest.raises(Conflict):  # nor claim the upload back
        await repo.claim(ID, 5)
    assert (await row(repo)).offset == 2
    moved = await repo.advance(ID, expected=2, offset=4, now=T1, expires_at=None, fence=9)
    assert moved.offset == 4
    assert (await repo.claim(ID, 9)) is not None  # claiming again with one's own token is fine


async def test_forget_removes_the_row(repo: UploadRepository) -> None:
    await repo.add(new_upload())
    await repo.forget(ID)
    assert await repo.get(ID) is None


async def test_a_transition_on_an_unknown_upload_is_a_conflict(repo: UploadRepository) -> None:
    with pytest.raises(Conflict):
        await repo.advance(ID, expected=0, offset=1, now=T1, expires_at=None)
    with pytest.raises(Conflict):
        await repo.terminate(ID, T1)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_failing_database_is_unavailable_with_retry_after(
    tmp_path: Path, kind: str
) -> None:
    if kind == "sqlite":
        broken = tmp_path / "uploads.db"  # the medium returns garbage
        broken.write_bytes(b"not a database, " * 64)
        url = f"sqlite+aiosqlite:///{broken}"
    else:
        url = "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
    engine = create_engine(url)
    transactions = create_transactions(engine)
    repo = SqlUploadRepository(transactions)
    try:
        for attempt in (repo.ping(), repo.get(ID), repo.add(new_upload())):
            with pytest.raises(Unavailable) as raised:
                await attempt
            assert raised.value.status == 503
            assert raised.value.headers["Retry-After"].isdigit()
            assert raised.value.message.startswith("database unavailable: ")
            assert "\n" not in raised.value.message
    finally:
        await transactions.aclose()
        await engine.dispose()


# -- the outbox: events written with their state change, claimed under a lease ------------------

LEASE = timedelta(seconds=30)


def outbox_of(repo: UploadRepository) -> Outbox:
    assert isinstance(repo, Outbox)
    return repo


async def ready_upload(repo: UploadRepository, upload_id: str = ID) -> Upload:
    await repo.advance(upload_id, expected=0, offset=10, now=T1, expires_at=None)
    await repo.complete(upload_id, T1)
    return await repo.mark_ready(upload_id, "ab" * 32, T1)


async def test_each_reported_transition_writes_its_event_and_only_with_events_on(
    backend: Backend,
) -> None:
    repo = backend.repository(events=True)
    off = backend.repository()  # events off, over the same state
    outbox = outbox_of(repo)
    await repo.add(new_upload())
    await ready_upload(repo)
    await repo.terminate(ID, T1)
    await off.add(new_upload(PARTS[0]))
    await repo.expire(PARTS[0], T0 + timedelta(hours=2))
    await off.add(new_upload(PARTS[1]))  # events off: nothing written
    await off.terminate(PARTS[1], T1)

    events = await outbox.events_of(ID)
    assert [event.type for event in events] == [
        EventType.POST_CREATE,
        EventType.POST_FINISH,
        EventType.POST_TERMINATE,
    ]
    assert {event.status for event in events} == {DeliveryStatus.PENDING}
    assert len({event.id for event in events}) == 3
    created, finished, terminated = events
    assert created.upload["state"] == "receiving"
    assert created.upload["metadata"] == {"filename": "a.mp4", "flag": None}
    assert (finished.upload["state"], finished.upload["sha256"]) == ("ready", "ab" * 32)
    assert terminated.upload["state"] == "terminated"
    assert [event.type for event in await outbox.events_of(PARTS[0])] == [EventType.POST_EXPIRE]
    assert await outbox.events_of(PARTS[1]) == []


async def test_a_refused_transition_writes_no_event(backend: Backend) -> None:
    repo = backend.repository(events=True)
    off = backend.repository()  # events off, over the same state
    outbox = outbox_of(repo)
    await off.add(new_upload())
    with pytest.raises(Conflict):
        await repo.mark_ready(ID, "ab" * 32, T1)  # not verifying
    with pytest.raises(Conflict):
        await repo.expire(ID, T0)  # not past its expiry
    await off.terminate(ID, T1)
    with pytest.raises(Conflict):
        await repo.terminate(ID, T1)  # ended already
    for part in PARTS:
        await off.add(new_upload(part, concat="partial"))
    await repo.add_final(new_upload("f" * 32, length=20, concat="final", parts=PARTS))
    # (a second final of the same parts is no refusal since #24: a part that ended is)
    refused = new_upload("e" * 32, length=20, concat="final", parts=(PARTS[0], ID))
    with pytest.raises(Conflict):
        await repo.add_final(refused)  # ID ended (and is no partial upload)
    with pytest.raises(Conflict):
        await repo.terminate(PARTS[0], T1)  # a final waits for it
    assert await outbox.events_of(ID) == []
    assert await outbox.events_of(refused.id) == []
    assert await outbox.events_of(PARTS[0]) == []
    assert [event.type for event in await outbox.events_of("f" * 32)] == [EventType.POST_CREATE]


async def test_adding_an_existing_id_is_refused_and_writes_no_event(backend: Backend) -> None:
    repo = backend.repository(events=True)
    outbox = outbox_of(repo)
    await repo.add(new_upload())
    with pytest.raises(Unavailable):  # as the SQL insert's integrity error leaves its session
        await repo.add(new_upload(length=99))
    with pytest.raises(Unavailable):
        await repo.add_final(new_upload(length=99, concat="final"))
    [created] = await outbox.events_of(ID)
    assert created.type is EventType.POST_CREATE
    assert (await row(repo)).length == 10


async def test_state_change_and_outbox_row_commit_or_roll_back_together(
    databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQL only: it makes the outbox row's own insert fail (``db.repository.outbox_row``)."""
    repo = databases.repository(events=True)
    outbox = outbox_of(repo)
    await repo.add(new_upload())
    with pytest.raises(Unavailable):  # the state change fails (the id exists): no event either
        await repo.add(new_upload())
    [first] = await outbox.events_of(ID)

    # the event's insert fails (its id is taken): the state change is rolled back with it
    def same_id(event: EventType, upload: Upload, at: datetime) -> dict[str, object]:
        return {**outbox_row(event, upload, at), "id": first.id}

    monkeypatch.setattr(db_repository, "outbox_row", same_id)
    await repo.advance(ID, expected=0, offset=10, now=T1, expires_at=None)
    await repo.complete(ID, T1)
    with pytest.raises(Unavailable):
        await repo.mark_ready(ID, "ab" * 32, T1)
    with pytest.raises(Unavailable):
        await repo.terminate(ID, T1)
    stored = await row(repo)
    assert (stored.state, stored.sha256) == (UploadState.VERIFYING, None)
    assert await outbox.events_of(ID) == [first]


async def test_claims_are_leased_and_outcomes_need_the_latest_claim(backend: Backend) -> None:
    repo = backend.repository(events=True)
    outbox = outbox_of(repo)
    await repo.add(new_upload())
    await repo.add(new_upload(PARTS[0]))
    assert await outbox.claim_due(T0 - timedelta(seconds=1), T0 + LEASE, 10) == []  # not due
    claimed = await outbox.claim_due(T0, T0 + LEASE, 1)
    assert [event.upload_id for event in claimed] == [ID]  # oldest first, up to the limit
    [mine] = claimed
    others = await outbox.claim_due(T1, T1 + LEASE, 10)  # leased: only the other event
    assert [event.upload_id for event in others] == [PARTS[0]]
    assert await outbox.claim_due(T1, T1 + LEASE, 10) == []

    later = T0 + LEASE + timedelta(seconds=1)  # the first lease ran out: claimed again
    [again] = await outbox.claim_due(later, later + LEASE, 1)
    assert (again.id, again.claim != mine.claim) == (mine.id, True)
    assert not await outbox.delivered(mine, later)  # a stale claim records nothing
    assert not await outbox.retry(mine, FailureReason.TIMEOUT, later)
    assert not await outbox.give_up(mine, FailureReason.TIMEOUT, later)

    assert await outbox.retry(again, FailureReason.SERVER_ERROR, later + timedelta(seconds=5))
    [retried] = await outbox.events_of(ID)
    assert (retried.status, retried.attempts, retried.last_error) == (
        DeliveryStatus.PENDING,
        1,
        FailureReason.SERVER_ERROR,
    )
    assert retried.next_attempt_at == later + timedelta(seconds=5)
    assert await outbox.claim_due(later, later + LEASE, 10) == []  # not due again yet
    due = later + timedelta(seconds=5)
    [third] = await outbox.claim_due(due, due + LEASE, 1)
    assert third.id == mine.id
    assert await outbox.delivered(third, due)
    assert not await outbox.delivered(third, due)  # once
    [done] = await outbox.events_of(ID)
    assert (done.status, done.attempts, done.delivered_at, done.last_error) == (
        DeliveryStatus.DELIVERED,
        2,
        due,
        None,
    )
    assert await outbox.claim_due(due + LEASE * 10, due + LEASE * 11, 10) != []  # the other one


async def test_an_uploads_events_are_claimed_one_at_a_time_in_order(backend: Backend) -> None:
    """post-finish is not claimed while post-create is out (held, or waiting for a retry): a
    webhook hears of one upload's events in the order they happened. Other uploads go on."""
    repo = backend.repository(events=True)
    outbox = outbox_of(repo)
    await repo.add(new_upload())
    await repo.advance(ID, expected=0, offset=10, now=T0, expires_at=None)
    await repo.complete(ID, T0)
    await repo.mark_ready(ID, "ab" * 32, T0)
    await repo.add(new_upload(PARTS[0]))
    created, finished = await outbox.events_of(ID)
    assert (created.type, finished.type) == (EventType.POST_CREATE, EventType.POST_FINISH)
    [other] = await outbox.events_of(PARTS[0])

    # post-finish waits while post-create is out; another upload's event goes on
    claimed = await outbox.claim_due(T1, T1 + LEASE, 10)
    assert [event.id for event in claimed] == [created.id, other.id]
    assert await outbox.claim_due(T1, T1 + LEASE, 10) == []  # nor by another drainer

    mine = claimed[0]
    retry_at = T1 + timedelta(seconds=5)
    assert await outbox.retry(mine, FailureReason.SERVER_ERROR, retry_at)
    assert await outbox.claim_due(T1 + timedelta(seconds=1), T1 + LEASE, 10) == []  # waits too
    [again] = await outbox.claim_due(retry_at, retry_at + LEASE, 10)
    assert again.id == created.id
    # ended: the next one's turn
    assert await outbox.give_up(again, FailureReason.SERVER_ERROR, retry_at)
    [then] = await outbox.claim_due(retry_at, retry_at + LEASE, 10)
    assert then.id == finished.id


async def test_given_up_events_are_failed_and_old_ended_events_pruned(backend: Backend) -> None:
    repo = backend.repository(events=True)
    outbox = outbox_of(repo)
    await repo.add(new_upload())
    await repo.add(new_upload(PARTS[0]))
    await repo.add(new_upload(PARTS[1], created_at=T1 + LEASE))
    [failing, delivering] = await outbox.claim_due(T0, T0 + LEASE, 2)
    assert await outbox.give_up(failing, FailureReason.TIMEOUT, T1)
    assert await outbox.delivered(delivering, T1)
    assert [event.status for event in await outbox.events_of(failing.upload_id)] == [
        DeliveryStatus.FAILED
    ]
    assert await outbox.claim_due(T1 + LEASE * 2, T1 + LEASE * 3, 10) != []  # PARTS[1] only
    assert await outbox.prune(T1) == 2  # written before T1, no longer pending
    assert await outbox.events_of(ID) == []
    assert await outbox.events_of(PARTS[0]) == []
    assert len(await outbox.events_of(PARTS[1])) == 1  # pending events are never pruned
    assert await outbox.prune(T1 + LEASE * 10) == 0


async def test_a_stored_error_that_is_no_fixed_reason_reads_as_unknown(
    databases: Databases,
) -> None:
    """Older versions stored the receiver's own words as the error: never read back as such."""
    repo = databases.repository(events=True)
    await repo.add(new_upload())
    sessions = create_sessionmaker(databases.engine())
    async with sessions.begin() as session:
        await session.execute(update(OutboxRow).values(last_error="HTTP 307: http://10.0.0.5/"))
    [event] = await repo.events_of(ID)
    assert event.last_error is FailureReason.UNKNOWN
    [claimed] = await repo.claim_due(T1, T1 + LEASE, 1)
    assert await repo.retry(claimed, FailureReason.REDIRECT, T1)
    [event] = await repo.events_of(ID)
    assert event.last_error is FailureReason.REDIRECT


async def test_concurrent_drainers_never_claim_one_event_twice(backend: Backend) -> None:
    first = backend.repository(events=True)
    second = backend.repository()  # another process on the same database (memory: the same)
    for number in range(40):
        await first.add(new_upload(f"{number:032x}"))
    claims: list[list[str]] = [[], []]

    async def drain(outbox: Outbox, into: list[str]) -> None:
        while batch := await outbox.claim_due(T1, T1 + LEASE, 3):
            into.extend(event.id for event in batch)

    async with anyio.create_task_group() as group:
        group.start_soon(drain, outbox_of(first), claims[0])
        group.start_soon(drain, outbox_of(second), claims[1])
    assert len(claims[0]) + len(claims[1]) == 40
    assert set(claims[0]).isdisjoint(claims[1])


# -- upload tickets (TicketRepository, beside the uploads) ------------------------------------


def tickets_of(repo: UploadRepository) -> TicketRepository:
    assert isinstance(repo, SqlUploadRepository | MemoryUploadRepository)
    return repo


def new_ticket(ticket_id: str = "7" * 32, **values: object) -> Ticket:
    ticket = Ticket(
        id=ticket_id,
        secret_hash="ab" * 32,
        owner="jwt:iss:alice",
        created_at=T0,
        expires_at=T0 + timedelta(hours=1),
        uploads=2,
        max_size=100,
        allowed_types=("video/*",),
        metadata={"tenant": "t1"},
    )
    return replace(ticket, **values)  # type: ignore[arg-type]


async def test_a_ticket_round_trips_and_each_upload_made_with_it_uses_it(
    repo: UploadRepository,
) -> None:
    tickets = tickets_of(repo)
    assert await tickets.get_ticket("7" * 32) is None
    ticket = new_ticket()
    await tickets.add_ticket(ticket)
    assert await tickets.get_ticket(ticket.id) == ticket
    await repo.add(new_upload("1" * 32, ticket=ticket.id, owner=ticket.owner))
    await repo.add(new_upload("2" * 32, ticket=ticket.id, owner=ticket.owner, created_at=T1))
    assert (await row(repo, "1" * 32)).ticket == ticket.id
    assert (await tickets.get_ticket(ticket.id)) == replace(ticket, used=2)
    with pytest.raises(TicketUsedUp, match="every upload it may"):
        await repo.add(new_upload("3" * 32, ticket=ticket.id))
    assert await repo.get("3" * 32) is None  # a refused use inserts nothing
    assert await tickets.ticket_uploads(ticket.id) == ("1" * 32, "2" * 32)
    assert await tickets.ticket_uploads("8" * 32) == ()


async def test_a_revoked_expired_or_unknown_ticket_makes_nothing_and_uses_nothing(
    repo: UploadRepository,
) -> None:
    tickets = tickets_of(repo)
    await tickets.add_ticket(new_ticket())
    with pytest.raises(Unauthorized, match="expired"):  # created at its expiry: too late
        await repo.add(new_upload(ticket="7" * 32, created_at=T0 + timedelta(hours=1)))
    with pytest.raises(Unauthorized, match="invalid"):
        await repo.add(new_upload(ticket="8" * 32))
    revoked = await tickets.revoke_ticket("7" * 32, T1)
    assert revoked is not None
    assert revoked.revoked_at == T1
    again = await tickets.revoke_ticket("7" * 32, T1 + timedelta(seconds=5))
    assert again == revoked  # revoked once, when it was first revoked
    assert await tickets.revoke_ticket("8" * 32, T1) is None
    with pytest.raises(Unauthorized, match="revoked"):
        await repo.add(new_upload(ticket="7" * 32))
    assert await repo.get(ID) is None
    assert (await tickets.get_ticket("7" * 32)) == replace(revoked, used=0)


async def test_a_refused_upload_or_final_uses_none_of_its_ticket(repo: UploadRepository) -> None:
    tickets = tickets_of(repo)
    await tickets.add_ticket(new_ticket(uploads=5))
    quota = Quota(uploads=1)
    await repo.add(new_upload("1" * 32, owner="alice", ticket="7" * 32), quota)
    with pytest.raises(QuotaExceeded):
        await repo.add(new_upload("2" * 32, owner="alice", ticket="7" * 32), quota)
    final = new_upload("3" * 32, length=None, concat="final", parts=PARTS, ticket="7" * 32)
    with pytest.raises(Conflict):  # its parts do not exist
        await repo.add_final(final)
    ticket = await tickets.get_ticket("7" * 32)
    assert ticket is not None
    assert ticket.used == 1


async def test_racing_uses_of_a_ticket_on_two_engines_never_pass_its_uploads(
    backend: Backend,
) -> None:
    """Creations with one ticket racing on two engines (two replicas; on memory, tasks): the
    use is a compare-and-set in the insert's transaction, so exactly ``uploads`` get in."""
    repos = [backend.repository(), backend.repository()]
    await tickets_of(repos[0]).add_ticket(new_ticket(uploads=3))

    async def create(index: int) -> None:
        await repos[index % 2].add(new_upload(f"{index:032x}", ticket="7" * 32))

    outcomes = await _race(8, create, TicketUsedUp)
    assert sorted(outcomes) == [False] * 5 + [True] * 3
    ticket = await tickets_of(repos[1]).get_ticket("7" * 32)
    assert ticket is not None
    assert ticket.used == 3


async def test_a_page_of_direct_uploads_only_or_of_the_others(repo: UploadRepository) -> None:
    await repo.add(new_upload("1" * 32))
    await repo.add(new_upload("2" * 32, direct=True, created_at=T1))
    assert (await row(repo, "2" * 32)).direct is True
    assert (await row(repo, "1" * 32)).direct is False
    direct = await repo.list_page(UploadQuery(direct=True))
    assert [upload.id for upload in direct] == ["2" * 32]
    others = await repo.list_page(UploadQuery(direct=False))
    assert [upload.id for upload in others] == ["1" * 32]
    both = await repo.list_page(UploadQuery())
    assert [upload.id for upload in both] == ["2" * 32, "1" * 32]


async def test_an_upload_refused_before_it_held_anything_gives_its_ticket_the_use_back(
    repo: UploadRepository,
) -> None:
    tickets = tickets_of(repo)
    await tickets.add_ticket(new_ticket(uploads=3))
    for index in range(3):
        await repo.add(new_upload(f"{index:032x}", ticket="7" * 32))
    await repo.fail(f"{0:032x}", "too large", T1, only_from=RECEIVING, give_back=True)
    await repo.terminate(f"{1:032x}", T1, give_back=True)
    ticket = await tickets.get_ticket("7" * 32)
    assert ticket is not None
    assert ticket.used == 1
    # once: the same upload ended again gives nothing more (the transition is refused)
    with pytest.raises(Conflict):
        await repo.fail(f"{0:032x}", "again", T1, only_from=RECEIVING, give_back=True)
    # a client's own termination, without give_back, keeps the use
    await repo.terminate(f"{2:032x}", T1)
    again = await tickets.get_ticket("7" * 32)
    assert again is not None
    assert again.used == 1
    # an upload made without a ticket has none to give
    await repo.add(new_upload("9" * 32))
    await repo.fail("9" * 32, "too large", T1, only_from=RECEIVING, give_back=True)
