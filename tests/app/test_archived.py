"""An archived channel disables its links: noticed from Slack's events or from a post Slack
refuses with `is_archived`; audited once; unarchiving or linking again turns them back on."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import select

import storage.digests
from bot.services import alerts, costs, digests
from bot.slack import outbox
from storage import audit, thresholds
from storage.models import ChannelLink, CostQuery, OutboxMessage
from tests.app.conftest import CHANNEL, OTHER_CHANNEL
from tests.app.helpers import eventually, replica_with_clock
from tests.fakes.clock import month, now
from tests.fakes.slack import event_callback

# Alerts need month-to-date spend to cross: the 15th of TODAY's month has some.
pytestmark = pytest.mark.as_of(day=15)


@pytest.fixture
def org(sandbox):
    return sandbox.data.org(sandbox.data.org_ids[0])


def _links(bot) -> dict[tuple[str, str], ChannelLink]:
    with bot.db.session() as session:
        return {(r.channel_id, r.org_id): r for r in session.exec(select(ChannelLink))}


def _audit(bot, action: str) -> list:
    with bot.db.session() as session:
        return audit.entries(session, action=action)


def _arm(bot, org_id: str, channel: str = CHANNEL) -> int:
    """A threshold the pending invoice crosses, and a digest due five minutes ago."""
    link = _links(bot)[(channel, org_id)]
    assert link.id is not None
    with bot.db.session() as session:
        thresholds.set_threshold(session, link_id=link.id, amount_cents=1000, updated_by="U_ADMIN")
        storage.digests.set_schedule(
            session,
            link_id=link.id,
            day="1",
            hour=9,
            minute=0,
            next_run_at=now() - timedelta(minutes=5),
            updated_by="U_ADMIN",
        )
    return link.id


async def _event(bot, kind: str, channel: str = CHANNEL, *, audited: tuple[str, int]) -> None:
    """Deliver the event, then wait for its work: Bolt acknowledges events before handling them,
    so the test waits until the audit log holds `audited` = (action, how many entries)."""
    payload = event_callback({"type": kind, "channel": channel, "user": "U_ADMIN"})
    response = await bot.driver.event(payload)
    assert response.status_code == 200, response.text
    action, count = audited
    await eventually(lambda: len(_audit(bot, action)) == count, what=f"{count} {action} entries")


async def test_the_archive_event_disables_the_channels_links_and_stops_alerts_and_digests(
    bot, org, sandbox
):
    other_org = sandbox.data.org_ids[1]
    bot.link(org.id)
    bot.link(other_org)
    bot.link(org.id, channel=OTHER_CHANNEL)
    _arm(bot, org.id)
    await _event(bot, "channel_archive", audited=("disable", 2))
    found = _links(bot)
    assert found[(CHANNEL, org.id)].disabled_at is not None
    assert found[(CHANNEL, other_org)].disabled_reason == "channel archived"
    assert found[(OTHER_CHANNEL, org.id)].disabled_at is None  # other channels are untouched
    entries = _audit(bot, "disable")
    assert sorted(json.loads(e.detail)["org_id"] for e in entries) == sorted([org.id, other_org])
    assert {e.user_id for e in entries} == {"U_ADMIN"}  # who archived it
    assert {json.loads(e.detail)["noticed"] for e in entries} == {"channel_archive event"}

    replica, _ = replica_with_clock(bot)
    assert (await alerts.check_thresholds(replica)).links == 0
    assert (await digests.start_due(replica)).due == 0
    with bot.db.session() as session:
        assert session.exec(select(OutboxMessage)).all() == []
        assert session.exec(select(CostQuery)).all() == []

    # The same archive noticed again changes and audits nothing (then the other channel's
    # archive, handled after it, shows it was handled).
    await bot.driver.event(event_callback({"type": "channel_archive", "channel": CHANNEL}))
    await _event(bot, "channel_archive", OTHER_CHANNEL, audited=("disable", 3))
    assert [json.loads(e.detail)["org_id"] for e in _audit(bot, "disable")[:1]] == [org.id]
    assert _links(bot)[(OTHER_CHANNEL, org.id)].disabled_at is not None
    await replica.atlas.aclose()


async def test_unarchiving_turns_the_links_back_on_with_their_settings(bot, org):
    bot.link(org.id)
    _arm(bot, org.id)
    await _event(bot, "group_archive", audited=("disable", 1))  # a private channel
    await _event(bot, "group_unarchive", audited=("enable", 1))
    assert _links(bot)[(CHANNEL, org.id)].disabled_at is None
    [enabled] = _audit(bot, "enable")
    assert json.loads(enabled.detail) == {"org_id": org.id, "reason": "channel unarchived"}
    replica, _ = replica_with_clock(bot)
    assert (await alerts.check_thresholds(replica)).alerts == 1  # the threshold was kept
    assert (await digests.start_due(replica)).started == 1  # the missed digest runs once
    await replica.atlas.aclose()


async def test_an_alert_refused_as_archived_fails_and_disables_the_links(bot, org):
    bot.link(org.id)
    _arm(bot, org.id)
    bot.fake.archive_channel(CHANNEL)
    replica, clock = replica_with_clock(bot)
    assert (await alerts.check_thresholds(replica)).alerts == 1
    report = await outbox.deliver_due(replica)
    assert (report.failed, report.sent) == (1, 0)
    [message] = _rows_outbox(bot)
    assert message.status == "failed" and "is_archived" in message.last_error
    assert _links(bot)[(CHANNEL, org.id)].disabled_reason == "channel archived"
    [entry] = _audit(bot, "disable")
    assert json.loads(entry.detail)["noticed"] == "outbox post: is_archived"
    assert entry.user_id == "slack"
    assert len(bot.fake.calls_to("chat.postMessage")) == 1  # tried once, not retried
    assert bot.fake.messages(CHANNEL) == {}
    clock.advance(hours=1)
    assert (await outbox.deliver_due(replica)).claimed == 0
    await replica.atlas.aclose()


def _rows_outbox(bot) -> list[OutboxMessage]:
    with bot.db.session() as session:
        return list(session.exec(select(OutboxMessage)))


async def test_a_command_answer_refused_as_archived_disables_the_links(bot, org):
    bot.link(org.id)
    bot.fake.archive_channel(CHANNEL)
    await bot.command("pending")
    reply = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    assert "archived" in reply[-1].body["text"]
    assert _links(bot)[(CHANNEL, org.id)].disabled_at is not None
    [entry] = _audit(bot, "disable")
    assert json.loads(entry.detail)["noticed"] == "pending answer: is_archived"


async def test_a_cost_result_refused_as_archived_ends_the_query_and_disables_the_links(bot, org):
    bot.link(org.id)
    await bot.command(f"costs {month(-20)} {month(-18)}")
    await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    bot.fake.archive_channel(CHANNEL)
    replica, clock = replica_with_clock(bot)
    for _ in range(10):
        await costs.poll_due(replica)
        clock.advance(minutes=5)
        with bot.db.session() as session:
            [query] = session.exec(select(CostQuery)).all()
        if query.status != "pending":
            break
    assert query.status == "failed" and "is_archived" in (query.error or "")
    assert [m for m in bot.fake.messages(CHANNEL).values() if "edited" in m] == []
    assert _links(bot)[(CHANNEL, org.id)].disabled_at is not None
    assert len(_audit(bot, "disable")) == 1
    await replica.atlas.aclose()


async def test_linking_again_turns_a_disabled_link_back_on(bot, org):
    bot.link(org.id)
    await _event(bot, "channel_archive", audited=("disable", 1))
    await bot.command("status")
    status = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    assert "*disabled*" in status[-1].body["text"] and f"link {org.id}" in status[-1].body["text"]
    await bot.command(f"link {org.id}")
    posted = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    assert "back on" in posted[-1]["text"]
    assert _links(bot)[(CHANNEL, org.id)].disabled_at is None
    [entry] = _audit(bot, "enable")
    assert entry.user_id == "U_ADMIN"
    # Linking once more is the plain "already linked" answer.
    await bot.command(f"link {org.id}")
    await bot.fake.wait_for_async(lambda: len(bot.fake.responses) == 2)
    assert "already linked" in bot.fake.responses[-1].body["text"]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "channel_archive"},  # no channel
        {"type": "channel_archive", "channel": {"id": "C_LINKED"}},
        {"type": "channel_unarchive", "channel": None},
    ],
)
async def test_archive_events_without_a_usable_channel_change_nothing(bot, org, event):
    bot.link(org.id)
    bot.link(org.id, channel=OTHER_CHANNEL)
    response = await bot.driver.event(event_callback(event))
    assert response.status_code == 200
    # A good event delivered after it is handled after it: once that shows, the bad one was.
    await _event(bot, "channel_archive", OTHER_CHANNEL, audited=("disable", 1))
    assert _links(bot)[(CHANNEL, org.id)].disabled_at is None
    assert _audit(bot, "enable") == []
    assert [c.method for c in bot.fake.calls if c.method != "auth.test"] == []  # nothing said


async def test_an_archive_event_from_another_workspace_leaves_this_one_alone(bot, org):
    bot.link(org.id)
    bot.link(org.id, channel=OTHER_CHANNEL)
    payload = event_callback({"type": "channel_archive", "channel": CHANNEL}, team_id="T_OTHER")
    assert (await bot.driver.event(payload)).status_code == 200
    await _event(bot, "channel_archive", OTHER_CHANNEL, audited=("disable", 1))
    assert _links(bot)[(CHANNEL, org.id)].disabled_at is None
