"""The outbox against a fake Slack that behaves as Slack does: an alert or digest is delivered
exactly once when Slack answers, and never lost when its answer is lost or no lookup is possible.

Each test queues one message, runs the *outbox* job on a replica whose clock it moves, and
counts what is in the channel.
"""

from __future__ import annotations

import logging

import pytest

from bot.slack.outbox import EVENT_TYPE, POSSIBLE_REPEAT, backoff, deliver_due
from storage import outbox
from storage.models import OutboxMessage
from tests.app.conftest import CHANNEL, TEAM
from tests.app.helpers import replica_with_clock

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
KEY = "alert:1:2026-11:100"


def _enqueue(bot, replica, *, channel: str = CHANNEL, chart: bool = False) -> None:
    payload = {
        "text": "Atlas spend passed 100%",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "alert"}}],
    }
    with bot.db.session() as session:
        outbox.enqueue(
            session,
            key=KEY,
            team_id=TEAM,
            channel_id=channel,
            payload=payload,
            now=replica.clock(),
            attachment=PNG if chart else None,
            attachment_name="chart.png" if chart else None,
        )


def _posted(bot, channel: str = CHANNEL) -> list[dict]:
    return [
        m
        for m in bot.fake.messages(channel).values()
        if (m.get("metadata") or {}).get("event_payload", {}).get("key") == KEY
    ]


def _row(bot) -> OutboxMessage:
    with bot.db.session() as session:
        row = outbox.get_message(session, key=KEY)
    assert row is not None
    return row


async def _deliver_until_done(replica, clock, attempts: int = 5):
    reports = []
    for _ in range(attempts):
        reports.append(await deliver_due(replica))
        clock.advance(seconds=backoff(len(reports)) + 1)
    return reports


@pytest.fixture
async def replica(bot):
    replica, clock = replica_with_clock(bot)
    yield replica, clock
    await replica.atlas.aclose()


async def test_a_post_whose_answer_is_lost_is_found_and_not_posted_again(bot, replica):
    """Slack took the post, then the connection dropped before its answer."""
    deps, clock = replica
    _enqueue(bot, deps)
    bot.fake.fail_next("chat.postMessage", status=0, applied=True)
    reports = await _deliver_until_done(deps, clock)
    assert [r.retried for r in reports[:1]] == [1] and reports[1].recovered == 1
    assert len(_posted(bot)) == 1
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    row = _row(bot)
    assert row.status == "sent" and row.message_ts == _posted(bot)[0]["ts"]


async def test_a_post_whose_answer_is_lost_in_a_channel_the_bot_never_joined(bot, replica):
    """chat:write.public posted it; history needs membership: the bot joins, then looks."""
    deps, clock = replica
    bot.fake.add_channel("C_PUBLIC", name="finance", is_member=False)
    bot.link(bot.sandbox.data.org_ids[0], channel="C_PUBLIC")
    _enqueue(bot, deps, channel="C_PUBLIC")
    bot.fake.fail_next("chat.postMessage", status=0, applied=True)
    reports = await _deliver_until_done(deps, clock)
    assert reports[1].recovered == 1
    assert len(_posted(bot, "C_PUBLIC")) == 1
    assert len(bot.fake.calls_to("conversations.join")) == 1
    assert _row(bot).status == "sent"


async def test_when_no_lookup_is_possible_it_is_posted_again_marked_never_failed(
    bot, replica, caplog
):
    """History rate limited (the restricted tier: one request a minute): the bot cannot know
    whether the first post went out, so it posts again, saying it may be a repeat."""
    deps, clock = replica
    _enqueue(bot, deps)
    bot.fake.fail_next("chat.postMessage", status=0, applied=True)
    bot.fake.fail_next("conversations.history", status=429, retry_after=60, times=100)
    with caplog.at_level(logging.WARNING):
        reports = await _deliver_until_done(deps, clock)
    assert sum(r.failed for r in reports) == 0
    posts = _posted(bot)
    assert len(posts) == 2  # the first, unconfirmed; the second, marked
    marked = posts[-1]
    assert marked["metadata"]["event_payload"]["possible_repeat"] is True
    assert POSSIBLE_REPEAT in marked["text"] and POSSIBLE_REPEAT in str(marked["blocks"])
    assert marked["metadata"]["event_type"] == EVENT_TYPE
    assert _row(bot).status == "sent"
    assert any("possible repeat" in r.getMessage() for r in caplog.records)


async def test_a_private_channel_the_bot_cannot_read_is_posted_again_marked(bot, replica):
    """not_in_channel on the lookup and no way to join (a private channel it was removed from
    answers channel_not_found to the post, so here the history alone refuses)."""
    deps, clock = replica
    _enqueue(bot, deps)
    bot.fake.fail_next("chat.postMessage", status=0, applied=True)
    bot.fake.fail_next("conversations.history", error="not_in_channel", times=2)
    bot.fake.fail_next("conversations.join", error="method_not_supported_for_channel_type")
    reports = await _deliver_until_done(deps, clock)
    assert sum(r.failed for r in reports) == 0
    assert len(_posted(bot)) == 2 and _row(bot).status == "sent"


async def test_a_refused_post_is_not_looked_up_before_the_retry(bot, replica):
    """A 429 is an answer: the post surely did not go out, so no history read is spent."""
    deps, clock = replica
    _enqueue(bot, deps)
    bot.fake.fail_next("chat.postMessage", status=429, retry_after=1, times=4)
    await _deliver_until_done(deps, clock)
    assert len(_posted(bot)) == 1
    assert bot.fake.calls_to("conversations.history") == []


async def test_a_sender_that_stopped_mid_post_leaves_it_to_be_looked_up(bot, replica):
    """`mark_sending` is committed before the post: a claim after a crash looks first."""
    deps, clock = replica
    _enqueue(bot, deps)
    with bot.db.session() as session:
        [row] = outbox.claim_due(session, now=deps.clock(), owner="dead", lease_seconds=1, limit=1)
        assert row.id is not None
        outbox.mark_sending(session, id=row.id, owner="dead")
    posted = await bot.deps.slack.chat_postMessage(
        channel=CHANNEL,
        text="x",
        metadata={"event_type": EVENT_TYPE, "event_payload": {"key": KEY}},
    )
    clock.advance(seconds=5)  # the dead sender's lease runs out
    report = await deliver_due(deps)
    assert report.recovered == 1
    assert _row(bot).message_ts == posted["ts"]
    assert len(_posted(bot)) == 1


async def test_a_digest_chart_goes_in_its_thread_for_every_member(bot, replica):
    deps, _ = replica
    _enqueue(bot, deps, chart=True)
    assert (await deliver_due(deps)).sent == 1
    [message] = _posted(bot)
    assert not [b for b in message.get("blocks", []) if b["type"] == "image"]
    [upload] = [u for u in bot.fake.uploads if u.completed]
    assert (upload.channel_id, upload.thread_ts, upload.data) == (CHANNEL, message["ts"], PNG)


async def test_a_refused_chart_never_costs_the_digest(bot, replica, caplog):
    deps, _ = replica
    _enqueue(bot, deps, chart=True)
    bot.fake.fail_next("files.completeUploadExternal", error="invalid_blocks")
    with caplog.at_level(logging.WARNING):
        assert (await deliver_due(deps)).sent == 1
    assert len(_posted(bot)) == 1 and _row(bot).status == "sent"
    assert any("without its chart" in r.getMessage() for r in caplog.records)


async def test_under_the_restricted_history_tier_the_lookup_gives_way_to_a_marked_post(
    bot, replica
):
    """15 messages a page, one request a minute: the key is on page 2, which is rate limited.
    The old search restarted from page 1 at every attempt and the alert never went out."""
    deps, clock = replica
    bot.fake.history_tier = "restricted"
    _enqueue(bot, deps)
    bot.fake.fail_next("chat.postMessage", status=0, applied=True)
    assert (await deliver_due(deps)).retried == 1
    for n in range(20):  # the channel moves on: the lost post is now beyond the first page
        await bot.deps.slack.chat_postMessage(channel=CHANNEL, text=f"chatter {n}")
    clock.advance(seconds=backoff(1) + 1)
    report = await deliver_due(deps)
    assert (report.sent, report.failed) == (1, 0)
    history = bot.fake.calls_to("conversations.history")
    assert len(history) == 2 and history[1]["cursor"]  # page 1, then page 2 refused (429)
    posts = _posted(bot)
    assert len(posts) == 2 and posts[-1]["metadata"]["event_payload"]["possible_repeat"]
