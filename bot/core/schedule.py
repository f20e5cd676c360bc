"""Digest schedule maths: when a monthly digest next runs, from APScheduler's ``CronTrigger``.

A schedule is a day of the month (1–31 or ``last``) and a UTC time. A day a
month lacks means that month's last day (the 31st runs on 30 April and on
28 or 29 February), which one cron expression cannot say, so days 29 and 30
combine two triggers with ``OrTrigger``: the day itself in the months that have
it, February's last day otherwise. Day 31 is simply ``last``.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from bot.core.months import add_months

# `digest on` without a day or time: the 1st of the month at 09:00 UTC.
DEFAULT_DAY = 1
DEFAULT_TIME = time(9, 0)


def trigger(day: str, hour: int, minute: int, tz: str = "UTC") -> BaseTrigger:
    """The trigger for ``day`` ("1".."31" or "last") at ``hour:minute`` in ``tz``."""
    at = {"hour": hour, "minute": minute, "second": 0, "timezone": tz}
    if day == "last" or day == "31":
        return CronTrigger(day="last", **at)
    number = int(day)
    if not 1 <= number <= 31:
        raise ValueError(f"day must be 1–31 or last, got {day!r}")
    if number <= 28:
        return CronTrigger(day=number, **at)
    return OrTrigger(
        [CronTrigger(month="1,3-12", day=number, **at), CronTrigger(month=2, day="last", **at)]
    )


def next_run(day: str, hour: int, minute: int, *, after: datetime, tz: str = "UTC") -> datetime:
    """The first occurrence strictly after ``after`` (a schedule never fires the moment it is set)."""
    fire: datetime | None = trigger(day, hour, minute, tz).get_next_fire_time(
        None, after + timedelta(microseconds=1)
    )
    if fire is None:  # pragma: no cover - monthly triggers always have a next time
        raise ValueError("the schedule has no next run")
    return fire


def reported_month(run_at: datetime) -> date:
    """A digest that runs in a month reports on the full month before it."""
    return add_months(run_at, -1)
