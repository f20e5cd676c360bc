"""The suite's one "today", and the clocks built on it.

``TEST_TODAY=YYYY-MM-DD pytest …`` runs the suite as of that date; without it, ``TODAY``
is the real date (UTC). Everything that has a notion of the date follows the running
test's day, ``today()``: the sandbox Atlas generates its invoices for it
(``tests/conftest.py``), the bot under test reads its time from ``now`` (the ``bot``
fixture; ``serve`` processes through ``tests.fakes.as_of``), and the fake Slack's
timestamps start from it. ``.ci/run`` runs the date-sensitive tests (marker ``dates``) as
of month edges, a mid-month day and a leap day.

A test that means a particular day of the month says so with
``@pytest.mark.as_of(day=20)`` (or ``day="last"``): the 20th of ``TODAY``'s month, so its
month and year still follow ``TEST_TODAY``. Time of day is the wall clock's: ``now`` is the
real time moved by whole days, so leases, back-offs and poll times pass as a test waits.
``Clock`` is a clock a test sets and advances itself.
"""

from __future__ import annotations

import calendar
import os
from datetime import UTC, date, datetime, timedelta

import pytest

from bot.core.months import add_months

ENV = "TEST_TODAY"


def _env_today() -> date:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise pytest.UsageError(f"{ENV} must be a date as YYYY-MM-DD, got {raw!r}") from None


TODAY = _env_today()
# The running test's day (TODAY, or the day its `as_of` marker names), and how many whole days
# the wall clock is moved to reach it. The shift is fixed when the day is set, so time never
# runs backwards (past midnight, the date moves on as a real one does).
_day = TODAY
_shift = TODAY - datetime.now(UTC).date()


def today() -> date:
    """The running test's day."""
    return _day


def set_today(day: date) -> None:
    """Make ``day`` the running test's day (the autouse fixture in ``tests/conftest.py``)."""
    global _day, _shift
    _day, _shift = day, day - datetime.now(UTC).date()


def now() -> datetime:
    """The wall clock (UTC), moved by whole days so that its date is ``today()``."""
    return datetime.now(UTC) + _shift


def day_of(day: int | str, month: date | None = None) -> date:
    """A day of ``month`` (``TODAY``'s by default): 1–31, or ``"last"``.

    A day the month lacks is its last day (31 in February is the 28th or 29th), as
    ``digest on 31`` means too.
    """
    month = month or TODAY
    last = calendar.monthrange(month.year, month.month)[1]
    return month.replace(day=last if day == "last" else min(int(day), last))


def month(offset: int, day: date | None = None) -> str:
    """``YYYY-MM`` of the month ``offset`` months from ``today()``'s (``-1``: the month before)."""
    return f"{add_months(day or today(), offset):%Y-%m}"


def at(day: date, hour: int = 12) -> datetime:
    """``day`` at ``hour``:00 UTC."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


class Clock:
    """A settable clock: a test moves it past stored due times, or sets it to a day it means."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
