"""`Background`: work handed off after an acknowledgement, on a real event loop."""

from __future__ import annotations

import asyncio

from bot.runtime.background import Background


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
