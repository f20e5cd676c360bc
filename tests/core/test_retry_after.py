"""``parse_retry_after``: what every Atlas and Slack ``Retry-After`` value means to the bot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from bot.core.retry_after import MAX_RETRY_AFTER, parse_retry_after

NOW = datetime(2027, 3, 1, 12, tzinfo=UTC)


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not RFC 9110's form, but sent, and meant as it reads
        ("-3", 0.0),
        ("inf", MAX_RETRY_AFTER),
        ("-inf", 0.0),
        ("1e9", MAX_RETRY_AFTER),
        (_http_date(NOW + timedelta(seconds=90)), 90.0),
        (_http_date(NOW - timedelta(days=1)), 0.0),
        (_http_date(NOW + timedelta(days=400)), MAX_RETRY_AFTER),
    ],
)
def test_values_become_seconds_within_the_cap(value, seconds):
    assert parse_retry_after(value, now=NOW.timestamp()) == seconds


@pytest.mark.parametrize(
    "value", [None, "", "   ", "nan", "NaN", "soon", "12 seconds", "Mon, 99 Foo 2027", "0x10"]
)
def test_unreadable_values_leave_the_choice_to_the_caller(value):
    assert parse_retry_after(value, now=NOW.timestamp()) is None


def test_a_date_without_a_zone_is_not_guessed():
    assert parse_retry_after("Mon, 01 Mar 2027 12:01:30 -0000") is None


def test_the_cap_is_the_callers_to_choose():
    assert parse_retry_after("120", cap=60) == 60
