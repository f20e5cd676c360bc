"""Schedule edges: month ends, February, day 31, the moment a schedule is switched on."""

from datetime import UTC, date, datetime

import pytest

from bot.core.months import add_months
from bot.core.schedule import next_run, reported_month


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "after", "expected"),
    [
        ("1", at(2026, 11, 23, 12, 0), at(2026, 12, 1, 9, 0)),
        ("1", at(2026, 12, 1, 8, 59), at(2026, 12, 1, 9, 0)),
        ("1", at(2026, 12, 1, 9, 0), at(2027, 1, 1, 9, 0)),  # never the same instant
        ("31", at(2026, 4, 1), at(2026, 4, 30, 9, 0)),  # April has no 31st
        ("31", at(2027, 2, 1), at(2027, 2, 28, 9, 0)),
        ("last", at(2028, 2, 1), at(2028, 2, 29, 9, 0)),  # leap year
        ("30", at(2027, 2, 1), at(2027, 2, 28, 9, 0)),
        ("30", at(2027, 3, 1), at(2027, 3, 30, 9, 0)),  # March has a 30th: not its last day
        ("29", at(2028, 2, 1), at(2028, 2, 29, 9, 0)),
        ("29", at(2027, 2, 1), at(2027, 2, 28, 9, 0)),
        ("29", at(2027, 1, 29, 9, 0), at(2027, 2, 28, 9, 0)),
        ("15", at(2026, 12, 31, 23, 59), at(2027, 1, 15, 9, 0)),  # across the year end
    ],
)
def test_next_run(day, after, expected):
    assert next_run(day, 9, 0, after=after) == expected


def test_every_month_of_a_year_for_day_31_runs_once_on_its_last_day():
    runs, moment = [], at(2027, 1, 1)
    for _ in range(12):
        moment = next_run("31", 23, 30, after=moment)
        runs.append(moment)
    assert [r.month for r in runs] == list(range(1, 13))
    assert [r.day for r in runs] == [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def test_bad_day_is_refused():
    with pytest.raises(ValueError, match="1–31"):
        next_run("32", 9, 0, after=at(2026, 1, 1))


def test_reported_month_is_the_full_month_before():
    assert reported_month(at(2027, 1, 1, 9)) == date(2026, 12, 1)
    assert reported_month(at(2026, 3, 31, 9)) == date(2026, 2, 1)
    assert add_months(date(2026, 11, 1), -13) == date(2025, 10, 1)
