"""``InFlight``: what a HEAD waits for among this process's running PATCHes on an upload."""

from __future__ import annotations

import anyio

from upload_service.tus.inflight import LIVE, InFlight


async def test_with_no_patch_running_it_is_settled_at_once() -> None:
    in_flight = InFlight()
    assert await in_flight.settled("a", wait=0)
    assert not in_flight.running("a")


async def test_a_patch_that_ends_is_waited_for() -> None:
    in_flight = InFlight()
    ended: list[bool] = []

    async def broken_off() -> None:
        with in_flight.patch("a") as reading:
            reading.done()  # its body broke off; it commits what arrived, taking a while
            await anyio.sleep(3 * LIVE)
            ended.append(True)

    async with anyio.create_task_group() as group:
        group.start_soon(broken_off)
        await anyio.lowlevel.checkpoint()
        assert in_flight.running("a")
        assert await in_flight.settled("a", wait=30)
        assert ended == [True]
    assert not in_flight.running("a")


async def test_a_patch_still_reading_its_body_is_not_waited_for() -> None:
    in_flight = InFlight()
    stop = anyio.Event()

    async def alive() -> None:
        with in_flight.patch("a"):  # its client sends, or pauses: the body goes on
            await stop.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(alive)
        await anyio.lowlevel.checkpoint()
        assert not await in_flight.settled("a", wait=30)
        assert in_flight.running("a")  # answered while it still runs
        stop.set()


async def test_a_patch_past_its_body_is_waited_for_up_to_the_bound() -> None:
    in_flight = InFlight()
    stop = anyio.Event()

    async def committing() -> None:
        with in_flight.patch("a") as reading:
            reading.done()
            await stop.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(committing)
        await anyio.lowlevel.checkpoint()
        assert not await in_flight.settled("a", wait=2 * LIVE)
        assert in_flight.running("a")
        stop.set()
    assert await in_flight.settled("a", wait=0)


async def test_a_body_done_twice_counts_once() -> None:
    in_flight = InFlight()
    with in_flight.patch("a") as first, in_flight.patch("a") as second:
        first.done()
        first.done()
        assert not await in_flight.settled("a", wait=30)  # the second still reads
        second.done()
    assert not in_flight.running("a")


async def test_patches_on_other_uploads_are_not_waited_for() -> None:
    in_flight = InFlight()
    with in_flight.patch("b") as reading:
        reading.done()
        assert await in_flight.settled("a", wait=30)
        assert in_flight.running("b")
    assert not in_flight.running("b")
