"""Scheduler jobs: fixed interval tickers that read due work from the database.

APScheduler 3 does not coordinate processes over one job store, so jobs hold
no state of their own: each tick claims due rows (with leases and conditional
updates) and every replica may run every job. ``billing-bot jobs run NAME``
runs one tick now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.deps import Deps
from bot.services import alerts, costs, digests
from bot.slack import outbox

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
        result = await JOBS[name](deps)
    except asyncio.CancelledError:
        # Stopping: whatever this tick had claimed is leased and will be taken up again.
        log.info("job %s was cancelled while stopping", name)
        return None
    except Exception:
        log.exception("job %s failed; it runs again at its next tick", name)
        deps.metrics.job_runs.labels(job=name).inc()
        return None
    deps.metrics.job_runs.labels(job=name).inc()
    return result


class Jobs:
    """The ``AsyncIOScheduler`` with one interval job per entry of ``JOBS``, and its runs in flight.

    ``stop`` lets the running ticks finish (bounded) before the caller closes the
    clients they use, so a stop in the middle of a post neither logs a traceback
    nor leaves a lease to run out.
    """

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._running: set[asyncio.Task[Any]] = set()
        for name in JOBS:
            self.scheduler.add_job(
                self._tick,
                "interval",
                seconds=interval_seconds(deps, name),
                args=(name,),
                id=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def start(self) -> None:
        self.scheduler.start()

    async def _tick(self, name: str) -> Any:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            return await run_job(self.deps, name)
        finally:
            if task is not None:
                self._running.discard(task)

    async def stop(self, timeout: float = 15.0) -> None:
        """No new ticks, then let the running ones finish (bounded), then shut down.

        The order matters: APScheduler's asyncio executor cancels the runs still in
        flight when it shuts down, so the scheduler is only paused while they finish.
        """
        if not self.scheduler.running:
            return
        self.scheduler.pause()
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)
        self.scheduler.shutdown(wait=False)


def build_scheduler(deps: Deps) -> AsyncIOScheduler:
    """The bare scheduler of a ``Jobs`` (for callers that stop it themselves)."""
    return Jobs(deps).scheduler
