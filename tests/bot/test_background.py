"""`Background` (work handed off after an acknowledgement) and `SingleFlight` (one answer shared
by callers asking at once), on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from bot.background import Background
from bot.singleflight import SingleFlight


async def test_handed_off_work_runs_after_the_caller_returned_and_a_drain_waits_for_it():
    background, done = Background(), []

    async def work() -> None:
        await asyncio.sleep(0.05)
        done.append("work")

    await background.run(work())
    assert done == [] and background.pending == 1  # the caller went on at once
    await background.drain(timeout=5)
    assert done == ["work"] and background.pending == 0


async def test_a_drain_gives_up_after_its_timeout():
    background = Background()
    await background.run(asyncio.sleep(10))
    await background.drain(timeout=0.05)
    assert background.pending == 1  # still running: the stop goes on without it


async def test_inline_work_is_finished_before_run_returns():
    background, done = Background(inline=True), []

    async def work() -> None:
        await asyncio.sleep(0.01)
        done.append("work")

    await background.run(work())
    assert done == ["work"] and background.pending == 0


async def test_callers_at_once_share_one_fetch_and_later_callers_fetch_again():
    flight, fetches = SingleFlight(), []

    async def fetch() -> int:
        fetches.append(1)
        await asyncio.sleep(0.05)
        return len(fetches)

    first = await asyncio.gather(*(flight.run("org", fetch) for _ in range(5)))
    assert first == [1] * 5 and len(fetches) == 1
    assert await flight.run("org", fetch) == 2  # nothing kept once answered
    assert await flight.run("other", fetch) == 3  # another key is another fetch


async def test_an_error_reaches_every_caller_sharing_it_and_is_not_kept():
    flight, calls = SingleFlight(), []

    async def fetch() -> str:
        calls.append(1)
        await asyncio.sleep(0.02)
        if len(calls) == 1:
            raise RuntimeError("atlas said no")
        return "ok"

    results = await asyncio.gather(
        *(flight.run("k", fetch) for _ in range(3)), return_exceptions=True
    )
    assert [str(r) for r in results] == ["atlas said no"] * 3
    assert await flight.run("k", fetch) == "ok"


async def test_one_caller_giving_up_does_not_cancel_the_others():
    flight = SingleFlight()

    async def fetch() -> str:
        await asyncio.sleep(0.05)
        return "answer"

    impatient = asyncio.ensure_future(flight.run("k", fetch))
    patient = asyncio.ensure_future(flight.run("k", fetch))
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert await patient == "answer"
    with pytest.raises(asyncio.CancelledError):
        await impatient
