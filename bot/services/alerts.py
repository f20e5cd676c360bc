"""Threshold alerts: month-to-date spend and its month-end forecast against each link's threshold.

The *thresholds* job reads each linked org's pending invoice once per run (not
once per channel), then for every link with a threshold records the levels it
has crossed this billing period. Recording is keyed by (link, period, level),
so only the run that inserts a level announces it, however many replicas run.
The announcement goes through the outbox in the same transaction; while a
link is snoozed, it waits in the outbox until the snooze ends.

Forecast: the pending invoice covers usage up to yesterday, so month-to-date
spend is spread over the days elapsed in the billing period and extended to
the period's length: ``mtd × period days ÷ elapsed days`` (just ``mtd`` on the
period's first day, when nothing has elapsed).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from sqlmodel import Session

from bot.atlas import AtlasError
from bot.deps import Deps
from bot.render.alerts import alert_message
from bot.render.blocks import oncall_mention
from bot.services import spend
from storage import alerts, channel_config, outbox, thresholds
from storage.models import Alert, ChannelLink, Threshold

log = logging.getLogger(__name__)

# Most severe first: one run that crosses several levels announces the highest. A forecast
# over the threshold says the month will end above it, which outranks 80% reached.
PRIORITY = ("100", "forecast", "80", "50")
PERCENT_LEVELS = (("50", 50), ("80", 80), ("100", 100))
CONCURRENT_ORGS = 20


def forecast_cents(mtd_cents: int, start: datetime, end: datetime, now: datetime) -> int:
    period_days = max((end.date() - start.date()).days, 1)
    elapsed = min(max((now.date() - start.date()).days, 0), period_days)
    if elapsed == 0:
        return mtd_cents
    value = Decimal(mtd_cents) * period_days / elapsed
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def crossed_levels(mtd_cents: int, forecast: int, threshold_cents: int) -> list[str]:
    levels = [name for name, pct in PERCENT_LEVELS if mtd_cents * 100 >= threshold_cents * pct]
    if forecast >= threshold_cents and "100" not in levels:
        levels.append("forecast")
    return levels


@dataclass(frozen=True)
class ThresholdReport:
    orgs: int = 0
    links: int = 0
    alerts: int = 0
    errors: int = 0


async def check_thresholds(deps: Deps) -> ThresholdReport:
    """The *thresholds* job."""
    rows = await deps.db.run(thresholds.all_thresholds)
    orgs = sorted({link.org_id for link, _ in rows})
    gate = asyncio.Semaphore(CONCURRENT_ORGS)

    async def fetch(org_id: str) -> spend.PendingSummary | None:
        async with gate:
            try:
                return await spend.org_pending(deps, org_id)
            except AtlasError as exc:
                log.warning("thresholds: cannot read org %s: %s", org_id, exc)
                return None

    pending = dict(zip(orgs, await asyncio.gather(*(fetch(o) for o in orgs)), strict=True))
    now = deps.clock()
    posted = 0
    for link, threshold in rows:
        summary = pending[link.org_id]
        if summary is None or not summary.invoices:
            continue
        if await deps.db.run(_record, link=link, threshold=threshold, summary=summary, now=now):
            posted += 1
    errors = sum(1 for s in pending.values() if s is None)
    return ThresholdReport(orgs=len(orgs), links=len(rows), alerts=posted, errors=errors)


def _record(
    session: Session,
    *,
    link: ChannelLink,
    threshold: Threshold,
    summary: spend.PendingSummary,
    now: datetime,
) -> bool:
    """Record the crossed levels; queue one announcement if this call crossed any. True if so."""
    invoice = summary.invoices[0]
    if invoice.start is None or invoice.end is None:
        return False
    start = datetime.combine(invoice.start, datetime.min.time(), tzinfo=now.tzinfo)
    end = datetime.combine(invoice.end, datetime.min.time(), tzinfo=now.tzinfo)
    mtd = summary.usage_cents
    forecast = forecast_cents(mtd, start, end, now)
    levels = crossed_levels(mtd, forecast, threshold.amount_cents)
    if not levels:
        return False
    period = invoice.start.strftime("%Y-%m")
    new = alerts.record_levels(
        session,
        link=link,
        period=period,
        levels=levels,
        amount_cents=mtd,
        threshold_cents=threshold.amount_cents,
        forecast_cents=forecast,
        now=now,
    )
    if not new:
        return False
    # record_levels refuses a link that was never stored, and returns alerts as stored.
    assert link.id is not None
    top = min(new, key=lambda a: PRIORITY.index(a.level))
    assert top.id is not None
    config = channel_config.get_config(session, team_id=link.team_id, channel_id=link.channel_id)
    message = alert_message(
        alert_id=top.id,
        org_id=link.org_id,
        period=period,
        level=top.level,
        amount_cents=mtd,
        threshold_cents=threshold.amount_cents,
        forecast_cents=forecast,
        top_projects=summary.merged("by_project"),
        oncall=oncall_mention(config.oncall_kind, config.oncall_id) if config else None,
        also_crossed=[a.level for a in new if a is not top],
    )
    key = f"alert:{link.id}:{period}:{top.level}"
    snoozed = alerts.snoozed_until(session, link_id=link.id, now=now)
    outbox.enqueue(
        session,
        key=key,
        team_id=link.team_id,
        channel_id=link.channel_id,
        payload={"text": message.text, "blocks": message.blocks},
        not_before=snoozed or now,
        now=now,
    )
    alerts.set_outbox_key(session, ids=[a.id for a in new if a.id is not None], key=key)
    return True


# ---- the Acknowledge and Snooze buttons ------------------------------------------------------


async def alert(deps: Deps, alert_id: int) -> Alert | None:
    """The alert a button belongs to, or None when it is gone (its link was unlinked)."""
    return await deps.db.run(alerts.get_alert, id=alert_id)


async def acknowledge(deps: Deps, *, alert_id: int, user_id: str, now: datetime) -> Alert | None:
    """Record the acknowledgement unless one was first; the alert as it then stands, or None."""
    return await deps.db.run(alerts.acknowledge, id=alert_id, user_id=user_id, now=now)


async def snooze(deps: Deps, *, alert_id: int, user_id: str, until: datetime) -> bool:
    """Hold the link's new alerts until ``until``; False when the alert is gone."""
    return await deps.db.run(alerts.snooze, id=alert_id, user_id=user_id, until=until)
