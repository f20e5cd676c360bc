"""`SingleFlight`: one answer shared by callers asking at once, on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from bot.core.singleflight import SingleFlight


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


async def test_a_caller_arriving_after_the_answer_asks_anew():
    """The answer is done but its done-callback has not run yet: the next caller must not
    be handed that older answer (``SingleFlight``'s promise: no answer older than the question)."""
    flight, answers = SingleFlight(), []
    release = asyncio.get_running_loop().create_future()

    async def fetch() -> int:
        answers.append(await release if not answers else "fresh")
        return answers[-1]

    first = asyncio.ensure_future(flight.run("org", fetch))
    await asyncio.sleep(0)  # `first` has started the fetch and waits on it
    release.set_result("old")
    # This turn of the loop runs the fetch to its end and only schedules its callbacks, which
    # run after this coroutine resumes: the finished answer is still in the map here.
    await asyncio.sleep(0)
    assert await flight.run("org", fetch) == "fresh"
    assert await first == "old"
