"""The *poll* job against the sandbox Atlas: rate limits reschedule instead of outliving the lease.

A poll claims its query for ``costs.LEASE_SECONDS``; a client sleeping for a ``Retry-After``
of close to a minute (Atlas's rate-limit page shows 55 s) inside that lease lets another
replica claim the query mid-sleep. The job passes ``max_wait`` and, when the wait would be
longer, moves the query's next poll past it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import date, timedelta

import pytest

import storage.costs
from bot.atlas import AtlasClient, CostQuery, ServiceAccountAuth
from bot.core.config import Settings
from bot.deps import Deps
from bot.runtime.app import build_deps
from bot.sandbox import Fault, SandboxServer
from bot.services import costs
from bot.slack.client import slack_client
from storage import Database
from storage.models import CostQuery as StoredQuery
from storage.models import QueryStatus
from tests.fakes.clock import Clock
from tests.fakes.slack import FakeSlack

POLL = "getCostExplorerUsage"
BOUND = 10.0  # seconds: a tick that sleeps out a Retry-After of 55 s fails here


def _months_back(today: date, n: int) -> date:
    year, month = today.year, today.month - n
    while month < 1:
        year, month = year - 1, month + 12
    return date(year, month, 1)


@pytest.fixture
async def deps(sandbox: SandboxServer, fake_slack: FakeSlack, db: Database) -> AsyncIterator[Deps]:
    creds = sandbox.data.credentials
    settings = Settings(
        _env_file=None,
        MONGODB_ATLAS_BASE_URL=sandbox.base_url,
        MONGODB_ATLAS_CLIENT_ID=creds.client_id,
        MONGODB_ATLAS_CLIENT_SECRET=creds.client_secret,
        SLACK_API_URL=fake_slack.base_url,
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET="test-signing-secret",
        DATABASE_URL=db.engine.url.render_as_string(hide_password=False),
        BOT_POLL_SECONDS=1,
        BOT_ADMINS="",
    )
    # The client as the bot builds it (its own httpx client and transport, the real sleep),
    # with fewer retries so a persistent fault ends quickly.
    atlas = AtlasClient(
        base_url=sandbox.base_url,
        auth=ServiceAccountAuth(creds.client_id, creds.client_secret),
        max_retries=1,
    )
    built = build_deps(
        settings, atlas=atlas, slack=slack_client(settings), db=db, clock=Clock(), worker="w1"
    )
    yield built
    await built.credentials.aclose()
    await atlas.aclose()


async def _stored_query(deps: Deps, sandbox: SandboxServer, *, age: timedelta = timedelta()):
    org_id = sandbox.data.org_ids[0]
    today = sandbox.data.today
    query = CostQuery(start=_months_back(today, 2), end=_months_back(today, 0))
    token = await deps.atlas.create_cost_query(org_id, query)
    now = deps.clock()
    return await deps.db.run(
        storage.costs.add_query,
        token=token,
        org_id=org_id,
        team_id="T1",
        channel_id="C1",
        requested_by="U1",
        params=query.body(),
        next_poll_at=now,
        now=now - age,
    )


def _row(deps: Deps, row_id: int) -> StoredQuery:
    with deps.db.session() as session:
        row = storage.costs.get_query(session, id=row_id)
    assert row is not None
    return row


def _polls(sandbox: SandboxServer) -> list[int | None]:
    return [r.status for r in sandbox.state.requests_for(POLL)]


def _after(row: StoredQuery, now, seconds: float) -> bool:
    due = row.next_poll_at.replace(tzinfo=now.tzinfo)
    return due >= now + timedelta(seconds=seconds)


async def test_a_retry_after_longer_than_the_lease_allows_reschedules_the_poll(deps, sandbox):
    """Atlas answers 429 with Retry-After 55 (its rate-limit page's example): the tick does
    not sleep it out under its lease, it releases the query until after it."""
    stored = await _stored_query(deps, sandbox)
    sandbox.state.add_fault(Fault("status", status=429, retry_after=55, operation=POLL, times=None))
    started = time.monotonic()
    report = await asyncio.wait_for(costs.poll_due(deps), BOUND)
    assert time.monotonic() - started < costs.LEASE_SECONDS / 2
    assert (report.claimed, report.waiting) == (1, 1)
    row = _row(deps, stored.id)
    assert row.status == QueryStatus.PENDING and row.lease_owner is None
    assert _after(row, deps.clock(), 55)
    assert _polls(sandbox) == [429]  # asked once; the Retry-After was not waited for


async def test_an_empty_bucket_reschedules_without_sending(deps, sandbox):
    """Two queries of one org, one token left in Atlas's Cost Explorer bucket, refilled in a
    minute: the second poll is not sent (no 429) and is rescheduled past the refill."""
    # Three tokens: two starts, one poll; the next refill is a minute away.
    sandbox.state.set_switches(rate_limit=3, rate_refill=1, rate_refill_seconds=60)
    sandbox.state.cost_polls_before_ready = 10  # a poll that is sent stays "not ready"
    first = await _stored_query(deps, sandbox)
    second = await _stored_query(deps, sandbox)
    report = await asyncio.wait_for(costs.poll_due(deps), BOUND)
    assert (report.claimed, report.waiting) == (2, 2)
    assert 429 not in [r.status for r in sandbox.state.requests]
    assert len(_polls(sandbox)) == 1
    rows = [_row(deps, first.id), _row(deps, second.id)]
    later = [row for row in rows if _after(row, deps.clock(), 50)]
    assert len(later) == 1  # the one that was not sent waits for the refill
    assert all(row.lease_owner is None for row in rows)


async def test_a_short_retry_after_is_waited_for_within_the_tick(deps, sandbox):
    sandbox.state.cost_polls_before_ready = 0
    stored = await _stored_query(deps, sandbox)
    sandbox.state.add_fault(Fault("status", status=429, retry_after=1, operation=POLL, times=1))
    report = await asyncio.wait_for(costs.poll_due(deps), BOUND)
    assert report.done == 1
    assert _row(deps, stored.id).status == QueryStatus.DONE
    assert _polls(sandbox) == [429, 200]


@pytest.mark.parametrize("kind", ["close", "garbage"])
async def test_a_transport_fault_on_the_poll_is_not_not_ready(deps, sandbox, kind):
    """A connection closed before any byte, or a malformed status line, is no 102: the
    client retries it (a read), and a retry that works gives the result in the same tick."""
    sandbox.state.cost_polls_before_ready = 0
    stored = await _stored_query(deps, sandbox)
    sandbox.state.add_fault(Fault(kind, operation=POLL, times=1))
    report = await asyncio.wait_for(costs.poll_due(deps), BOUND)
    assert report.done == 1
    assert _row(deps, stored.id).status == QueryStatus.DONE
    assert _polls(sandbox) == [None, 200]


async def test_a_poll_failing_for_two_hours_says_what_failed(deps, sandbox, fake_slack):
    """Polling stops after ``MAX_AGE`` either way, but a query whose polls kept failing is
    reported as the failure it is, not as a query Atlas did not finish."""
    stored = await _stored_query(deps, sandbox, age=costs.MAX_AGE + timedelta(minutes=1))
    sandbox.state.add_fault(Fault("close", operation=POLL, times=None))
    report = await asyncio.wait_for(costs.poll_due(deps), BOUND)
    assert report.expired == 1
    row = _row(deps, stored.id)
    assert row.status == QueryStatus.EXPIRED
    assert row.error is not None
    assert "did not finish" not in row.error
    assert "Atlas did not answer" in row.error and "RemoteProtocolError" in row.error


async def test_102_is_still_not_ready(deps, sandbox):
    sandbox.state.cost_polls_before_ready = 1
    stored = await _stored_query(deps, sandbox)
    report = await asyncio.wait_for(costs.poll_due(deps), BOUND)
    assert report.waiting == 1
    assert _row(deps, stored.id).attempts == 1
    assert _polls(sandbox) == [102]


def test_the_poll_wait_fits_in_the_lease(deps):
    wait = costs.poll_wait_seconds(deps, costs.LEASE_SECONDS)
    assert wait > 0
    assert wait + deps.atlas.poll_attempt_seconds + costs.LEASE_MARGIN_SECONDS <= (
        costs.LEASE_SECONDS
    )
