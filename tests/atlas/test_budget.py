"""The request budget's token buckets, driven by fake clocks (no real waiting).

What they model is Atlas's page "Atlas Administration API Rate Limits"
(https://www.mongodb.com/docs/atlas/api/api-rate-limit/): a bucket per endpoint set and
scope, a capacity, a refill of ``refillRate`` every ``refillDurationSeconds``,
``RateLimit-Limit`` / ``RateLimit-Remaining`` (which may be missing), and a 429 with
``Retry-After`` and the bucket's numbers in its body.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bot.atlas import ENDPOINT_SETS, Operation, RequestBudget
from bot.atlas._budget import COST_EXPLORER, INVOICES, OverBudget, Ticket
from bot.sandbox.state import ENDPOINT_SET_OF
from tests.atlas.conftest import FakeTime, VirtualTime

ORG = "o" * 24


def _answer(
    limit: int | None = None,
    remaining: int | None = None,
    *,
    status: int = 200,
    retry_after: int | None = None,
    body: object = None,
) -> httpx.Response:
    headers = {}
    if limit is not None:
        headers["RateLimit-Limit"] = str(limit)
    if remaining is not None:
        headers["RateLimit-Remaining"] = str(remaining)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, headers=headers, content=content)


def _budget(t: FakeTime | VirtualTime, **options) -> RequestBudget:
    return RequestBudget(clock=t.clock, sleep=t.sleep, **options)


async def _send(budget: RequestBudget, answer: httpx.Response, group: str = INVOICES) -> Ticket:
    ticket = await budget.acquire(ORG, group)
    budget.observe(ticket, answer)
    return ticket


def test_the_client_and_the_sandbox_split_the_endpoints_alike():
    """Atlas does not publish the billing endpoints' sets; the client's guess and the
    sandbox's model are one partition (named differently), so tests mean what they say."""
    for a in Operation:
        for b in Operation:
            assert (ENDPOINT_SETS[a] == ENDPOINT_SETS[b]) == (
                ENDPOINT_SET_OF[a] == ENDPOINT_SET_OF[b]
            ), (a, b)


async def test_a_new_bucket_sends_one_request_first_and_learns_from_its_answer():
    t = VirtualTime()
    budget = _budget(t)
    admitted: list[float] = []

    async def one() -> None:
        ticket = await budget.acquire(ORG, INVOICES)
        admitted.append(t.now)
        await asyncio.sleep(0.01)  # the request in flight
        budget.observe(ticket, _answer(limit=3, remaining=3 - len(admitted)))

    await t.gather(*(one() for _ in range(5)))
    # One first, then the two Atlas said were left; the rest wait for a refill.
    assert admitted[:3] == [10_000.0] * 3
    assert all(moment >= 10_000.0 + 60 for moment in admitted[3:])


async def test_learns_capacity_and_remaining_from_headers():
    t = FakeTime()
    budget = _budget(t)
    await _send(budget, _answer(limit=2, remaining=1))
    await _send(budget, _answer(limit=2, remaining=0))
    assert t.slept == []
    assert budget.tokens(ORG, INVOICES) == 0
    await budget.acquire(ORG, INVOICES)  # waits a whole refill interval after seeing it empty
    assert t.slept == [60]


async def test_after_the_wait_one_probe_goes_and_its_answer_says_how_many_more():
    t = VirtualTime()
    budget = _budget(t)
    await t.gather(_send(budget, _answer(limit=10, remaining=0)))
    started, admitted = t.now, []

    async def one() -> None:
        ticket = await budget.acquire(ORG, INVOICES)
        admitted.append(t.now - started)
        await asyncio.sleep(0.01)
        # Atlas refilled 4 (unknown to the budget) and counts this request.
        budget.observe(ticket, _answer(limit=10, remaining=4 - len(admitted)))

    await t.gather(*(one() for _ in range(4)))
    assert admitted == [60, 60, 60, 60]  # the probe, then three more at once, no 429
    assert budget.tokens(ORG, INVOICES) == 0


async def test_an_older_answer_never_raises_the_count():
    t = FakeTime()
    budget = _budget(t)
    await _send(budget, _answer(limit=5, remaining=4))
    older = await budget.acquire(ORG, INVOICES)
    newer = await budget.acquire(ORG, INVOICES)
    budget.observe(newer, _answer(limit=5, remaining=0))  # Atlas counted both already
    budget.observe(older, _answer(limit=5, remaining=1))  # arrives late: stale
    assert budget.tokens(ORG, INVOICES) == 0


async def test_requests_in_flight_are_taken_off_what_atlas_says_is_left():
    t = FakeTime()
    budget = _budget(t)
    await _send(budget, _answer(limit=5, remaining=4))
    first = await budget.acquire(ORG, INVOICES)
    await budget.acquire(ORG, INVOICES)  # still in flight when the first answer comes
    budget.observe(first, _answer(limit=5, remaining=3))
    assert budget.tokens(ORG, INVOICES) == 2


async def test_a_429_blocks_until_retry_after_and_its_body_teaches_the_refill():
    t = FakeTime()
    budget = _budget(t)
    await _send(budget, _answer(limit=10, remaining=9))
    body = {
        "error": 429,
        "errorCode": "RATE_LIMITED_TOKEN_BUCKET",
        "detail": "Rate limit exceeded for api/atlas/v2/orgs. Please retry after 55 seconds. "
        "Request capacity: 10. Refill rate: 5 per 60 seconds.",
        "parameters": ["api/atlas/v2/orgs", 55, 10, 5, 60],
    }
    # Another process emptied the bucket: Atlas says 429.
    await _send(budget, _answer(limit=10, remaining=0, status=429, retry_after=55, body=body))
    for _ in range(5):  # at the refill, the five the body named go without a probe
        await budget.acquire(ORG, INVOICES)
    assert t.slept == [55]
    await budget.acquire(ORG, INVOICES)
    assert t.slept == [55, 60]
    assert budget.waited_seconds == 115


async def test_the_refill_is_read_from_the_detail_when_parameters_are_missing():
    t = FakeTime()
    budget = _budget(t)
    detail = "Please retry after 3 seconds. Request capacity: 4. Refill rate: 2 per 10 seconds."
    await _send(budget, _answer(status=429, retry_after=3, body={"detail": detail}))
    await budget.acquire(ORG, INVOICES)
    await budget.acquire(ORG, INVOICES)
    assert t.slept == [3]
    await budget.acquire(ORG, INVOICES)
    assert t.slept == [3, 10]


async def test_a_429_without_retry_after_leaves_the_timing_to_the_caller():
    t = FakeTime()
    budget = _budget(t)
    await _send(budget, _answer(limit=10, remaining=3))
    await _send(budget, _answer(status=429))
    await budget.acquire(ORG, INVOICES)  # one probe, at once: the caller's backoff came first
    assert t.slept == []


async def test_without_headers_the_default_bucket_applies():
    """No RateLimit headers at all: Atlas's own example bucket, 10 and 5 per 60 s."""
    t = FakeTime()
    budget = _budget(t)
    for _ in range(10):
        await _send(budget, _answer())
    assert t.slept == []
    for _ in range(5):
        await _send(budget, _answer())
    assert t.slept == [60]
    await _send(budget, _answer())
    assert t.slept == [60, 60]


async def test_a_configured_refill_is_credited_whole():
    t = FakeTime()
    budget = _budget(t, refill=3)
    await _send(budget, _answer(limit=10, remaining=0))
    for _ in range(3):
        await budget.acquire(ORG, INVOICES)
    assert t.slept == [60]


async def test_endpoint_sets_and_orgs_have_their_own_buckets():
    t = FakeTime()
    budget = _budget(t)
    await _send(budget, _answer(limit=1, remaining=0))
    await _send(budget, _answer(limit=1, remaining=0), COST_EXPLORER)
    ticket = await budget.acquire("p" * 24, INVOICES)
    assert ticket.org_id == "p" * 24
    assert t.slept == []


async def test_max_wait_raises_instead_of_sleeping():
    t = FakeTime()
    budget = _budget(t)
    await _send(budget, _answer(limit=1, remaining=0))
    t.now += 20
    with pytest.raises(OverBudget) as over:
        await budget.acquire(ORG, INVOICES, max_wait=5)
    assert over.value.seconds == 40 and over.value.endpoint_set == INVOICES
    assert t.slept == []
    await budget.acquire(ORG, INVOICES, max_wait=40)  # a wait that fits is waited
    assert t.slept == [40]


async def test_an_unanswered_first_request_lets_the_next_one_go():
    t = FakeTime()
    budget = _budget(t)
    budget.release(await budget.acquire(ORG, INVOICES))  # reset: nothing learned
    await budget.acquire(ORG, INVOICES)
    assert t.slept == []


async def test_malformed_headers_are_ignored():
    t = FakeTime()
    budget = _budget(t, default_capacity=5)
    bad = httpx.Response(200, headers={"RateLimit-Limit": "lots", "RateLimit-Remaining": "?"})
    await _send(budget, bad)
    for _ in range(4):
        await _send(budget, bad)
    assert t.slept == []


def test_budget_arguments_are_checked():
    with pytest.raises(ValueError):
        RequestBudget(default_capacity=0)
    with pytest.raises(ValueError):
        RequestBudget(refill_seconds=0)
    with pytest.raises(ValueError):
        RequestBudget(refill=0)
