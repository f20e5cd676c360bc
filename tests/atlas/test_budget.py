"""The per-org request budget, driven by a fake clock (no real waiting)."""

import httpx

from bot.atlas import RequestBudget


class FakeTime:
    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def _response(limit=None, remaining=None):
    headers = {}
    if limit is not None:
        headers["RateLimit-Limit"] = str(limit)
    if remaining is not None:
        headers["RateLimit-Remaining"] = str(remaining)
    return httpx.Response(200, headers=headers)


async def test_default_limit_spreads_requests_over_the_window():
    t = FakeTime()
    budget = RequestBudget(default_limit=3, window_seconds=60, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        await budget.acquire("o1")
    assert t.slept == []
    await budget.acquire("o1")  # the fourth waits for the first to age out
    assert t.slept == [60]
    await budget.acquire("o2")  # other orgs are not held back
    assert t.slept == [60]


async def test_learns_the_limit_from_headers():
    t = FakeTime()
    budget = RequestBudget(default_limit=100, window_seconds=60, clock=t.clock, sleep=t.sleep)
    await budget.acquire("o")
    budget.observe("o", _response(limit=2, remaining=1))
    await budget.acquire("o")
    assert t.slept == []
    await budget.acquire("o")
    assert t.slept == [60]


async def test_remaining_zero_blocks_until_the_window_turns():
    t = FakeTime()
    budget = RequestBudget(default_limit=100, window_seconds=60, clock=t.clock, sleep=t.sleep)
    await budget.acquire("o")
    t.now += 10
    budget.observe("o", _response(limit=100, remaining=0))
    await budget.acquire("o")
    assert t.slept == [50]


async def test_retry_after_blocks_the_org():
    t = FakeTime()
    budget = RequestBudget(clock=t.clock, sleep=t.sleep)
    budget.block("o", 7)
    await budget.acquire("o")
    assert t.slept == [7]
    assert budget.waited_seconds == 7


async def test_malformed_headers_are_ignored():
    t = FakeTime()
    budget = RequestBudget(default_limit=5, clock=t.clock, sleep=t.sleep)
    budget.observe(
        "o", httpx.Response(200, headers={"RateLimit-Limit": "lots", "RateLimit-Remaining": "?"})
    )
    for _ in range(5):
        await budget.acquire("o")
    assert t.slept == []
