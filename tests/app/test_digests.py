"""Digests end to end: `digest on/off/now`, the digests job, polling, the outbox with its chart."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from sqlmodel import select

import storage.digests
from bot.core.money import format_cents
from bot.sandbox import Fault
from bot.services import costs, digests
from bot.slack.outbox import deliver_due, metadata
from storage import outbox
from storage.models import CostQuery, DigestSchedule, OutboxMessage
from tests.app.conftest import CHANNEL
from tests.app.helpers import replica_with_clock
from tests.fakes.clock import now

# Digests report months: all of them run again as of month edges in .ci/run.
pytestmark = pytest.mark.dates


@pytest.fixture
def org(sandbox):
    return sandbox.data.org(sandbox.data.org_ids[0])


def _rows(bot, model):
    with bot.db.session() as session:
        return session.exec(select(model)).all()


async def _posted(bot, n):
    return await bot.fake.wait_for_async(
        lambda: (
            len(bot.fake.calls_to("chat.postMessage")) >= n
            and bot.fake.calls_to("chat.postMessage")
        )
    )


async def _drive(replica, clock, rounds=6):
    """What the scheduler does: digests, poll and outbox ticks, with time moving on."""
    for _ in range(rounds):
        await digests.start_due(replica)
        await costs.poll_due(replica)
        await deliver_due(replica)
        clock.advance(minutes=1)


async def test_digest_on_schedules_every_link_and_off_stops_them(bot, org, sandbox):
    bot.link(org.id)
    bot.link(sandbox.data.org_ids[1])
    await bot.command("digest on last 07:30")
    text = (await _posted(bot, 1))[-1]["text"]
    assert "first run" in text and "07:30 UTC" in text
    rows = _rows(bot, DigestSchedule)
    assert len(rows) == 2 and {(r.day, r.hour, r.minute) for r in rows} == {("last", 7, 30)}
    assert all(r.next_run_at > now() for r in rows)
    await bot.command("digest off")
    await _posted(bot, 2)
    assert _rows(bot, DigestSchedule) == []


async def test_digest_now_posts_the_summary_with_its_chart(bot, org):
    bot.link(org.id)
    await bot.command("digest now")
    reply = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    assert "digest" in reply[-1].body["text"]
    replica, clock = replica_with_clock(bot)
    await _drive(replica, clock)
    [post] = bot.fake.calls_to("chat.postMessage")
    blocks = post["blocks"]
    # The chart is shared in the digest's thread, for every member of the channel: an upload
    # referenced as `slack_file` before it is shared and processed is refused (invalid_blocks).
    assert not [b for b in blocks if b["type"] == "image"]
    [message] = _rows(bot, OutboxMessage)
    [upload] = [u for u in bot.fake.uploads if u.completed]
    assert upload.data.startswith(b"\x89PNG")
    assert (upload.channel_id, upload.thread_ts) == (post["channel"], message.message_ts)
    assert message.file_id == upload.file_id
    month = org.closed[0]
    assert format_cents(month.subtotal_cents) in json.dumps(blocks)
    assert post["metadata"]["event_payload"]["key"].startswith("digest-now:")
    await replica.atlas.aclose()


async def test_a_due_schedule_runs_once_even_with_two_replicas_racing(bot, org):
    bot.link(org.id)
    past = now() - timedelta(minutes=5)
    with bot.db.session() as session:
        storage.digests.set_schedule(
            session, link_id=1, day="1", hour=9, minute=0, next_run_at=past, updated_by="U"
        )
    first, clock = replica_with_clock(bot)
    second, _ = replica_with_clock(bot)
    second = type(second)(**{**second.__dict__, "clock": clock})
    reports = await asyncio.gather(digests.start_due(first), digests.start_due(second))
    assert sorted(r.started for r in reports) == [0, 1]
    [query] = _rows(bot, CostQuery)
    assert query.purpose == "digest" and query.digest_key.startswith("digest:1:")
    [schedule] = _rows(bot, DigestSchedule)
    assert schedule.next_run_at > clock()  # advanced once, to the next occurrence
    await _drive(first, clock)
    await _drive(second, clock)
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    [message] = _rows(bot, OutboxMessage)
    assert message.status == "sent" and message.key == query.digest_key
    for replica in (first, second):
        await replica.atlas.aclose()


async def test_a_failed_digest_is_said_in_the_channel_once(bot, org, sandbox):
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    link = bot.replica()
    with bot.db.session() as session:
        from storage import links

        [row] = links.all_links(session)
    await digests.start_now(replica, row, "U_ADMIN")
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=403,
            error_code="USER_UNAUTHORIZED",
            operation="getCostExplorerUsage",
            times=None,
        )
    )
    await _drive(replica, clock)
    [post] = bot.fake.calls_to("chat.postMessage")
    assert "could not be produced" in post["text"] and "USER_UNAUTHORIZED" in post["text"]
    await replica.atlas.aclose()
    await link.atlas.aclose()


async def test_a_post_that_may_have_gone_out_is_found_not_repeated(bot, org):
    """A worker died after Slack accepted the post but before recording it."""
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    with bot.db.session() as session:
        outbox.enqueue(
            session,
            key="alert:1:2026-11:80",
            team_id="T1",
            channel_id=CHANNEL,
            payload={"text": "80% of the threshold"},
            now=clock(),
        )
    with bot.db.session() as session:
        [row] = outbox.claim_due(
            session, now=clock(), owner="dead-worker", lease_seconds=60, limit=5
        )
        assert row.id is not None
        outbox.mark_sending(session, id=row.id, owner="dead-worker")  # as the sender does
    await bot.deps.slack.chat_postMessage(
        channel=CHANNEL, text="80% of the threshold", metadata=metadata(row.key)
    )  # ...and the worker dies here
    clock.advance(minutes=3)  # the lease runs out
    report = await deliver_due(replica)
    assert (report.claimed, report.recovered, report.sent) == (1, 1, 0)
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    [stored] = _rows(bot, OutboxMessage)
    assert stored.status == "sent" and stored.message_ts
    await replica.atlas.aclose()


@pytest.mark.parametrize("error", ["channel_not_found", "is_archived", "not_in_channel"])
async def test_a_refusal_that_will_not_heal_marks_the_post_failed(bot, org, error):
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    with bot.db.session() as session:
        outbox.enqueue(
            session, key="k", team_id="T1", channel_id=CHANNEL, payload={"text": "x"}, now=clock()
        )
    bot.fake.fail_next("chat.postMessage", error=error)
    report = await deliver_due(replica)
    assert report.failed == 1
    [stored] = _rows(bot, OutboxMessage)
    assert stored.status == "failed" and error in stored.last_error
    clock.advance(hours=1)
    assert (await deliver_due(replica)).claimed == 0
    await replica.atlas.aclose()


async def test_a_slack_outage_is_retried_later(bot, org):
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    with bot.db.session() as session:
        outbox.enqueue(
            session, key="k", team_id="T1", channel_id=CHANNEL, payload={"text": "x"}, now=clock()
        )
    bot.fake.fail_next("chat.postMessage", status=500, times=10)
    report = await deliver_due(replica)
    assert report.retried == 1
    bot.fake.reset()
    assert (await deliver_due(replica)).claimed == 0  # not before its retry time
    clock.advance(minutes=15)
    assert (await deliver_due(replica)).sent == 1
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    await replica.atlas.aclose()


async def test_an_auth_error_keeps_the_post_for_later(bot, org):
    """A revoked token is the operators' to fix; the alert must still go out afterwards."""
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    with bot.db.session() as session:
        outbox.enqueue(
            session, key="k", team_id="T1", channel_id=CHANNEL, payload={"text": "x"}, now=clock()
        )
    bot.fake.fail_next("chat.postMessage", error="invalid_auth")
    assert (await deliver_due(replica)).retried == 1
    clock.advance(minutes=15)
    assert (await deliver_due(replica)).sent == 1
    await replica.atlas.aclose()
