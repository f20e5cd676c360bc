"""Scheduler jobs: fixed interval tickers that read due work from the database.

APScheduler 3 does not coordinate processes over one job store, so jobs hold
no state of their own: each tick claims due rows (with leases and conditional
updates) and every replica may run every job. ``billing-bot jobs run NAME``
runs one tick now.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot import alerts, costs, digests, outbox
from bot.deps import Deps

log = logging.getLogger(__name__)

JOBS: dict[str, Callable[[Deps], Awaitable[Any]]] = {
    "poll": costs.poll_due,
    "thresholds": alerts.check_thresholds,
    "digests": digests.start_due,
    "outbox": outbox.deliver_due,
}


def interval_seconds(deps: Deps, name: str) -> float:
    """The outbox ticks with the poll job: a queued post should not wait longer than a poll."""
    settings = deps.settings
    return {
        "poll": settings.BOT_POLL_SECONDS,
        "thresholds": settings.BOT_THRESHOLD_SECONDS,
        "digests": settings.BOT_DIGEST_SECONDS,
        "outbox": settings.BOT_POLL_SECONDS,
    }[name]


async def run_job(deps: Deps, name: str) -> Any:
    """One tick of one job; failures are logged, never raised into the scheduler."""
    try:
        return await JOBS[name](deps)
    except Exception:
        log.exception("job %s failed; it runs again at its next tick", name)
        return None


def build_scheduler(deps: Deps) -> AsyncIOScheduler:
    """An ``AsyncIOScheduler`` with one interval job per entry of ``JOBS`` (not started)."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    for name in JOBS:
        scheduler.add_job(
            run_job,
            "interval",
            seconds=interval_seconds(deps, name),
            args=(deps, name),
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
    return scheduler
