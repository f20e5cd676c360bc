"""Thresholds, on-call and alerts end to end: commands, the thresholds job, the outbox, the buttons."""

from __future__ import annotations

import calendar
import json
from decimal import Decimal

import pytest
from sqlmodel import select

from bot.core.money import format_cents
from bot.services import alerts
from bot.slack import outbox
from storage import audit
from storage.models import Alert, OutboxMessage, Threshold
from tests.app.conftest import CHANNEL
from tests.app.helpers import replica_with_clock
from tests.fakes import clock
from tests.fakes.slack import block_action

# Alerts need month-to-date spend to cross: these tests run on the 15th of TODAY's month
# unless they say which day they mean; `test_levels_as_of_today` runs on whatever day it is.
pytestmark = pytest.mark.as_of(day=15)


@pytest.fixture
def org(sandbox):
    return sandbox.data.org(sandbox.data.org_ids[0])


async def _ephemeral(bot) -> str:
    responses = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    return responses[-1].body["text"]


async def _posted(bot, n=1):
    return await bot.fake.wait_for_async(
        lambda: (
            len(bot.fake.calls_to("chat.postMessage")) >= n
            and bot.fake.calls_to("chat.postMessage")
        )
    )


def _rows(bot, model):
    with bot.db.session() as session:
        return session.exec(select(model)).all()


async def _set(bot, text, n):
    await bot.command(text)
    return (await _posted(bot, n))[-1]["text"]


async def test_admin_sets_threshold_oncall_and_status_shows_them(bot, org):
    bot.link(org.id)
    assert "$5,000.50" in await _set(bot, "threshold $5,000.50", 1)
    assert "<!subteam^S0ONCALL>" in await _set(bot, "oncall <!subteam^S0ONCALL|@billing-oncall>", 2)
    [threshold] = _rows(bot, Threshold)
    assert threshold.amount_cents == 500050
    await bot.command("status")
    status = await _ephemeral(bot)
    assert "threshold $5,000.50" in status and "<!subteam^S0ONCALL>" in status
    with bot.db.session() as session:
        actions = [e.action for e in audit.entries(session)]
    assert actions == ["oncall", "threshold"]
    await _set(bot, "threshold off", 3)
    assert _rows(bot, Threshold) == []


async def test_non_admins_cannot_change_alerting(bot, org):
    bot.link(org.id)
    for n, text in enumerate(("threshold 10", "oncall <@U0ONCALL>", "digest on", "digest off"), 1):
        response = await bot.command(text, user_id="U_MEMBER")
        assert response.status_code == 200, response.text
        await bot.fake.wait_for_async(lambda n=n: len(bot.fake.responses) == n)
        assert "Only workspace admins" in bot.fake.responses[-1].body["text"]
    assert _rows(bot, Threshold) == []


@pytest.mark.parametrize(
    "text", ["threshold 0", "threshold -5", "threshold 12.345", "threshold five"]
)
async def test_bad_amounts_are_refused(bot, org, text):
    bot.link(org.id)
    response = await bot.command(text)
    assert "Usage: threshold" in json.loads(response.text)["text"]
    assert _rows(bot, Threshold) == []


async def _threshold_run(bot, replica):
    report = await alerts.check_thresholds(replica)
    delivered = await outbox.deliver_due(replica)
    return report, delivered


async def test_alert_is_posted_once_with_the_oncall_mention(bot, org):
    bot.link(org.id)
    await _set(bot, "threshold 10", 1)
    await _set(bot, "oncall <@U0ONCALL|ana>", 2)
    replica, _ = replica_with_clock(bot)
    report, delivered = await _threshold_run(bot, replica)
    assert (report.alerts, delivered.sent) == (1, 1)
    alert = bot.fake.calls_to("chat.postMessage")[-1]
    blob = json.dumps(alert["blocks"])
    headline = next(b for b in alert["blocks"] if b["type"] == "section")
    assert headline["text"]["text"].startswith("<@U0ONCALL>")  # the mention notifies on-call
    assert format_cents(org.pending.subtotal_cents) in blob
    assert '"action_id": "alert_ack"' in blob and '"action_id": "alert_snooze"' in blob
    assert {a.level for a in _rows(bot, Alert)} == {"50", "80", "100"}  # crossed together
    for _ in range(3):  # however often the job runs
        report, delivered = await _threshold_run(bot, replica)
        assert (report.alerts, delivered.claimed) == (0, 0)
    assert len(bot.fake.calls_to("chat.postMessage")) == 3
    await replica.atlas.aclose()


@pytest.mark.as_of(day=20)
async def test_levels_cross_one_by_one_as_the_threshold_is_lowered(bot, org):
    # As of the 20th, 19 of the month's 28 to 31 days have elapsed: the month-end forecast is
    # 1.47 to 1.63 times month-to-date, under a threshold of 1/0.6 times it and over 1/0.9.
    bot.link(org.id)
    mtd = org.pending.subtotal_cents
    replica, _ = replica_with_clock(bot)
    posted_levels = []
    # 50% crossed only, then 80%, then 100%: each announced once, in its own message.
    for n, cents in enumerate([mtd * 100 // 60, mtd * 100 // 90, mtd - 1], start=1):
        await _set(bot, f"threshold {cents // 100}.{cents % 100:02d}", n * 2 - 1)
        await _threshold_run(bot, replica)
        posted_levels.append(bot.fake.calls_to("chat.postMessage")[-1]["text"])
    # 60% of the threshold: only 50% (the forecast stays under it). 90%: 80% and the
    # forecast, announced as the forecast (it outranks 80%). Over it: 100%.
    assert "reached 50%" in posted_levels[0]
    assert "forecast to pass" in posted_levels[1] and "80%" not in posted_levels[1].split(":")[0]
    assert "reached its" in posted_levels[2]
    assert sorted(a.level for a in _rows(bot, Alert)) == ["100", "50", "80", "forecast"]
    await replica.atlas.aclose()


@pytest.mark.dates
@pytest.mark.as_of(day="today")
async def test_levels_as_of_today(bot, org):
    """Whatever the day: the levels recorded this period are those that month-to-date spend
    and its month-end forecast (``mtd × days in month ÷ days elapsed``) cross, and the
    period is today's month. On the 1st nothing has been used yet, so nothing is crossed."""
    today = clock.today()
    mtd = org.pending.subtotal_cents
    assert (mtd == 0) == (today.day == 1)
    threshold = mtd * 100 // 85 if mtd else 1_000  # 85 % used: 50 and 80 crossed
    days, elapsed = calendar.monthrange(today.year, today.month)[1], today.day - 1
    forecast = mtd if elapsed == 0 else Decimal(mtd) * days / elapsed
    expected = {str(p) for p in (50, 80, 100) if mtd * 100 >= threshold * p}
    if forecast >= threshold and "100" not in expected:
        expected.add("forecast")
    bot.link(org.id)
    await _set(bot, f"threshold {_dollars(threshold)}", 1)
    replica, _ = replica_with_clock(bot)
    report, delivered = await _threshold_run(bot, replica)
    rows = _rows(bot, Alert)
    assert {a.level for a in rows} == expected
    assert {a.period for a in rows} == ({f"{today:%Y-%m}"} if expected else set())
    assert (report.alerts, delivered.sent) == ((1, 1) if expected else (0, 0))
    await replica.atlas.aclose()


async def test_forecast_warning_before_the_threshold_is_reached(bot, org, sandbox):
    bot.link(org.id)
    mtd = org.pending.subtotal_cents
    threshold = mtd + 100  # above month-to-date; the month-end forecast passes it
    await _set(bot, f"threshold {threshold // 100}.{threshold % 100:02d}", 1)
    replica, _ = replica_with_clock(bot)
    await _threshold_run(bot, replica)
    assert "forecast" in bot.fake.calls_to("chat.postMessage")[-1]["text"]
    assert {a.level for a in _rows(bot, Alert)} == {"50", "80", "forecast"}
    await replica.atlas.aclose()


async def test_pending_invoice_is_fetched_once_per_org_not_per_channel(bot, org, sandbox):
    for channel in ("C_LINKED", "C_OTHER", "C_THIRD"):
        bot.link(org.id, channel=channel)
    with bot.db.session() as session:
        from storage import links, thresholds

        for link in links.all_links(session):
            thresholds.set_threshold(
                session, link_id=link.id, amount_cents=1000, updated_by="U_ADMIN"
            )
    replica, _ = replica_with_clock(bot)
    sandbox.state.requests.clear()
    report, delivered = await _threshold_run(bot, replica)
    assert (report.orgs, report.links, report.alerts, delivered.sent) == (1, 3, 3, 3)
    assert len(sandbox.state.requests_for("listInvoicePending")) == 1
    await replica.atlas.aclose()


def _dollars(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


async def _alert_posted(bot, org, threshold="10"):
    bot.link(org.id)
    await _set(bot, f"threshold {threshold}", 1)
    replica, clock = replica_with_clock(bot)
    await _threshold_run(bot, replica)
    posted = bot.fake.calls_to("chat.postMessage")[-1]
    ts = next(ts for ts, m in bot.fake.messages(CHANNEL).items() if m.get("text") == posted["text"])
    alert_id = next(b for b in posted["blocks"] if b["type"] == "actions")["elements"][0]["value"]
    return replica, clock, ts, alert_id, posted["blocks"]


def _click(bot, action_id, alert_id, ts, blocks, user="U_MEMBER"):
    payload = block_action(
        action_id,
        alert_id,
        user_id=user,
        message_ts=ts,
        response_url=bot.fake.response_url("click"),
    )
    payload["message"]["blocks"] = blocks
    return payload


async def test_acknowledge_records_who_and_when_and_updates_the_alert(bot, org):
    replica, _, ts, alert_id, blocks = await _alert_posted(bot, org)
    response = await bot.driver.action(_click(bot, "alert_ack", alert_id, ts, blocks))
    assert response.status_code == 200
    update = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.update"))
    assert update[0]["ts"] == ts and "Acknowledged by <@U_MEMBER>" in json.dumps(
        update[0]["blocks"]
    )
    assert "alert_ack" not in json.dumps(update[0]["blocks"])
    [alert] = [a for a in _rows(bot, Alert) if str(a.id) == alert_id]
    assert alert.acknowledged_by == "U_MEMBER" and alert.acknowledged_at is not None
    # A second click (another user) keeps the first acknowledgement.
    await bot.driver.action(_click(bot, "alert_ack", alert_id, ts, blocks, user="U_ADMIN"))
    await bot.fake.wait_for_async(lambda: len(bot.fake.calls_to("chat.update")) == 2)
    assert "<@U_MEMBER>" in json.dumps(bot.fake.calls_to("chat.update")[1]["blocks"])
    await replica.atlas.aclose()


async def test_snooze_holds_new_alerts_until_it_ends(bot, org):
    mtd = org.pending.subtotal_cents
    replica, clock, ts, alert_id, blocks = await _alert_posted(
        bot,
        org,
        threshold=_dollars(mtd * 100 // 60),  # 60% used: only the 50% level
    )
    await bot.driver.action(_click(bot, "alert_snooze", alert_id, ts, blocks))
    update = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.update"))
    assert "Snoozed by <@U_MEMBER>" in json.dumps(update[0]["blocks"])
    [alert] = [a for a in _rows(bot, Alert) if str(a.id) == alert_id]
    assert alert.snoozed_by == "U_MEMBER" and alert.snoozed_until is not None
    # The threshold is lowered: the 100% level is crossed during the snooze. It is recorded
    # at once but waits in the outbox until the snooze ends, then goes out once.
    await _set(bot, f"threshold {_dollars(mtd - 100)}", 3)  # after the 1st notice and the alert
    posts = len(bot.fake.calls_to("chat.postMessage"))
    clock.now = bot.deps.clock()
    report, delivered = await _threshold_run(bot, replica)
    assert report.alerts == 1 and delivered.claimed == 0
    assert len(bot.fake.calls_to("chat.postMessage")) == posts
    clock.advance(hours=24, minutes=1)
    delivered = await outbox.deliver_due(replica)
    assert delivered.sent == 1
    assert "reached its" in bot.fake.calls_to("chat.postMessage")[-1]["text"]
    await replica.atlas.aclose()


@pytest.mark.parametrize("value", ["not-a-number", "999999", ""])
async def test_clicks_on_unknown_alerts_change_nothing(bot, org, value):
    bot.link(org.id)
    await bot.driver.action(_click(bot, "alert_ack", value, "1700000000.000100", []))
    text = await _ephemeral(bot)
    assert "not known" in text
    assert bot.fake.calls_to("chat.update") == []


async def test_a_slack_429_is_retried_and_the_alert_delivered_once(bot, org):
    bot.link(org.id)
    await _set(bot, "threshold 10", 1)
    bot.fake.fail_next("chat.postMessage", status=429, retry_after=1)
    replica, _ = replica_with_clock(bot)
    _, delivered = await _threshold_run(bot, replica)
    assert delivered.sent == 1
    alerts_posted = [c for c in bot.fake.calls if c.method == "chat.postMessage"][1:]
    assert len(alerts_posted) == 2  # the 429, then the retry after Retry-After
    assert (
        len([m for m in bot.fake.messages(CHANNEL).values() if "threshold" in m.get("text", "")])
        == 2
    )
    [row] = _rows(bot, OutboxMessage)
    assert row.status == "sent"
    await replica.atlas.aclose()
