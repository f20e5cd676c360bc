"""Monthly digests: claim due schedules, start the Cost Explorer query, post the summary when ready.

The *digests* job finds schedules whose ``next_run_at`` has passed. For each it
starts a Cost Explorer query for the two full months before the run (grouped
by project, so rows carry both service and project), then, in one
transaction, advances the schedule from the ``next_run_at`` it saw (only one
replica's update can match) and stores the query under the unique key
``digest:{link}:{YYYY-MM}``. A replica that loses the race, or crashes before
the transaction, changes nothing: the schedule stays due and the month's key
is still free. The *poll* job then polls the query like any other and, when
Atlas has the numbers, hands it back here (``complete``) to render the digest
and its chart into the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlmodel import Session

import storage.digests
from bot.atlas import AtlasError, CostQuery, CostResult
from bot.core.months import add_months
from bot.core.schedule import next_run, reported_month
from bot.deps import Deps
from bot.render.blocks import escape
from bot.render.chart import digest_chart_png
from bot.render.digests import digest_message, summarise_digest
from storage import costs, outbox
from storage.errors import AlreadyExists
from storage.models import ChannelLink, DigestSchedule
from storage.models import CostQuery as StoredQuery

log = logging.getLogger(__name__)

CONCURRENT = 20


def digest_key(link_id: int, month: date) -> str:
    return f"digest:{link_id}:{month:%Y-%m}"


def query_for(link: ChannelLink, month: date) -> CostQuery:
    """Cost Explorer rows for ``month`` and the month before it, per project and service."""
    return CostQuery(
        start=add_months(month, -1),
        end=add_months(month, 1),
        group_by="projects",
        organizations=(link.org_id,),
    )


@dataclass(frozen=True)
class DigestReport:
    due: int = 0
    started: int = 0
    lost_race: int = 0
    errors: int = 0


async def start_due(deps: Deps) -> DigestReport:
    """The *digests* job."""
    now = deps.clock()
    due = await deps.db.run(storage.digests.due_schedules, now=now, limit=500)
    gate = asyncio.Semaphore(CONCURRENT)

    async def one(link: ChannelLink, schedule: DigestSchedule) -> str:
        async with gate:
            return await _start_scheduled(deps, link, schedule, now)

    outcomes = await asyncio.gather(*(one(link, s) for link, s in due))
    return DigestReport(
        due=len(due),
        started=outcomes.count("started"),
        lost_race=outcomes.count("lost"),
        errors=outcomes.count("error"),
    )


async def _start_scheduled(
    deps: Deps, link: ChannelLink, schedule: DigestSchedule, now: datetime
) -> str:
    assert link.id is not None  # due schedules come from the database with their links
    month = reported_month(schedule.next_run_at)
    following = next_run(
        schedule.day, schedule.hour, schedule.minute, after=max(now, schedule.next_run_at)
    )
    try:
        atlas = await deps.credentials.client(link.org_id)
        token = await atlas.create_cost_query(link.org_id, query_for(link, month))
    except AtlasError as exc:
        # The schedule stays due: the next tick tries again.
        log.warning("digest for link %s: Atlas refused the query: %s", link.id, exc)
        return "error"
    won = await deps.db.run(
        _claim_and_store,
        link=link,
        schedule=schedule,
        following=following,
        token=token,
        month=month,
        key=digest_key(link.id, month),
        requested_by="schedule",
        now=now,
    )
    return "started" if won else "lost"


def _claim_and_store(
    session: Session,
    *,
    link: ChannelLink,
    schedule: DigestSchedule | None,
    following: datetime | None,
    token: str,
    month: date,
    key: str,
    requested_by: str,
    now: datetime,
) -> bool:
    if schedule is not None:
        # A stored schedule has its id, and its caller always says when it runs next.
        assert schedule.id is not None and following is not None
        if not storage.digests.advance(
            session, schedule_id=schedule.id, seen=schedule.next_run_at, next_run_at=following
        ):
            return False
    try:
        costs.add_query(
            session,
            token=token,
            org_id=link.org_id,
            team_id=link.team_id,
            channel_id=link.channel_id,
            requested_by=requested_by,
            params=query_for(link, month).body(),
            next_poll_at=now,
            purpose="digest",
            link_id=link.id,
            digest_month=f"{month:%Y-%m}",
            digest_key=key,
            now=now,
        )
    except AlreadyExists:
        log.info("digest %s was already started; not again", key)
    return True


async def start_now(deps: Deps, link: ChannelLink, user_id: str) -> date:
    """``digest now``: the digest of the last full month, started at once; returns that month."""
    now = deps.clock()
    month = reported_month(now)
    atlas = await deps.credentials.client(link.org_id)
    token = await atlas.create_cost_query(link.org_id, query_for(link, month))
    await deps.db.run(
        _claim_and_store,
        link=link,
        schedule=None,
        following=None,
        token=token,
        month=month,
        key=f"digest-now:{link.id}:{now:%Y%m%dT%H%M%S.%f}",
        requested_by=user_id,
        now=now,
    )
    return month


async def complete(deps: Deps, row: StoredQuery, result: CostResult) -> bool:
    """The query of a digest is ready: render it (and its chart) into the outbox, once."""
    month = date.fromisoformat(f"{row.digest_month}-01")
    try:
        atlas = await deps.credentials.client(row.org_id)
        pending = await atlas.pending_totals(row.org_id)
        mtd = sum(invoice.subtotal_cents for invoice in pending)
    except AtlasError as exc:
        log.warning("digest %s: month-to-date unavailable: %s", row.digest_key, exc)
        mtd = None
    summary = summarise_digest(result, org_id=row.org_id, month=month, month_to_date_cents=mtd)
    chart = await asyncio.to_thread(digest_chart_png, summary)
    message = digest_message(summary)
    return await deps.db.run(
        _finish_into_outbox,
        row=row,
        owner=deps.worker,
        payload={
            "text": message.text,
            "blocks": message.blocks,
            "image_alt": f"Atlas spend by month and top services, {month:%B %Y}",
        },
        chart=chart,
        now=deps.clock(),
    )


def _finish_into_outbox(
    session: Session,
    *,
    row: StoredQuery,
    owner: str,
    payload: dict[str, Any],
    chart: bytes,
    now: datetime,
) -> bool:
    assert row.id is not None  # the query was read from the database
    if not costs.finish(session, id=row.id, owner=owner, status="done", now=now):
        return False  # another worker finished it: it queued the digest
    outbox.enqueue(
        session,
        key=row.digest_key or f"digest-query:{row.id}",
        team_id=row.team_id,
        channel_id=row.channel_id,
        payload=payload,
        attachment=chart,
        attachment_name=f"atlas-digest-{row.digest_month}.png",
        now=now,
    )
    return True


def record_failure(
    session: Session, *, row: StoredQuery, owner: str, status: str, reason: str
) -> bool:
    """A digest that cannot be produced is said so in its channel, once."""
    assert row.id is not None  # the query was read from the database
    if not costs.finish(session, id=row.id, owner=owner, status=status, error=reason):
        return False
    outbox.enqueue(
        session,
        key=f"{row.digest_key or f'digest-query:{row.id}'}:failed",
        team_id=row.team_id,
        channel_id=row.channel_id,
        payload={
            "text": f"The Atlas digest for org {row.org_id} ({row.digest_month}) could not "
            f"be produced: {escape(reason)}"  # Atlas's words: no mentions, no links
        },
    )
    return True
