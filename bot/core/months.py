"""Calendar-month arithmetic, the one place it is written (billing periods are months)."""

from __future__ import annotations

from datetime import date, datetime


def first_of_month(moment: date | datetime) -> date:
    return date(moment.year, moment.month, 1)


def add_months(day: date | datetime, months: int) -> date:
    """The first of the month ``months`` after (negative: before) ``day``'s month."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)
