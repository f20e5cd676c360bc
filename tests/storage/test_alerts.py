"""Alerts: each (link, period, level) inserted once even under races; acknowledge, snooze."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypedDict, Unpack

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from storage import alerts, audit, links
from storage.db import Database
from storage.models import Alert, ChannelLink
from tests.storage.conftest import ORG_B, blocked_on_lock, make_link, run_together, wait_until

T0 = datetime(2025, 6, 20, 12, 0, tzinfo=UTC)


class LevelFields(TypedDict, total=False):
    """The amounts and time `alerts.record_levels` stores with each alert."""

    amount_cents: int
    threshold_cents: int
    forecast_cents: int | None
    now: datetime | None


def record(
    session: Session,
    link: ChannelLink,
    levels,
    *,
    period: str = "2025-06",
    **overrides: Unpack[LevelFields],
):
    values: LevelFields = {
        "amount_cents": 85_000,
        "threshold_cents": 100_000,
        "forecast_cents": 130_000,
        "now": T0,
    } | overrides
    return alerts.record_levels(session, link=link, period=period, levels=levels, **values)


def stored_alert(session: Session, alert_id: int) -> Alert:
    """The stored alert, which the test knows exists."""
    alert = alerts.get_alert(session, id=alert_id)
    assert alert is not None
    return alert


def count_alerts(db: Database) -> int:
    with db.session() as session:
        return session.exec(select(func.count()).select_from(Alert)).one()


def test_record_levels_stores_each_new_level_once(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    with db.session() as session:
        first = record(session, link, ["80", "50"])
    assert [a.level for a in first] == ["50", "80"]
    for alert in first:
        assert alert.id is not None
        assert (alert.link_id, alert.team_id, alert.channel_id, alert.period) == (
            link.id,
            "T1",
            "C1",
            "2025-06",
        )
        assert (alert.amount_cents, alert.threshold_cents, alert.forecast_cents) == (
            85_000,
            100_000,
            130_000,
        )
        assert alert.created_at == T0
        assert (alert.acknowledged_at, alert.snoozed_until, alert.outbox_key) == (None, None, None)

    with db.session() as session:
        again = record(session, link, ["50", "80", "100", "forecast"], amount_cents=101_000)
    assert [a.level for a in again] == ["100", "forecast"]
    other = make_link(db, org_id=ORG_B)
    with db.session() as session:
        assert record(session, link, ["50", "100"]) == []
        assert record(session, link, []) == []
        # Another period, or another link, starts over.
        assert [a.level for a in record(session, link, ["50"], period="2025-07")] == ["50"]
        assert [a.level for a in record(session, other, ["50"])] == ["50"]
    assert count_alerts(db) == 6

    with db.session() as session:
        june = alerts.alerts_for_link(session, link_id=link.id, period="2025-06")
        every = alerts.alerts_for_link(session, link_id=link.id)
    assert [a.level for a in june] == ["50", "80", "100", "forecast"]
    assert june[2].amount_cents == 101_000
    assert [a.period for a in every] == ["2025-06"] * 4 + ["2025-07"]


def test_forecast_may_be_unknown(db: Database) -> None:
    link = make_link(db)
    with db.session() as session:
        [alert] = record(session, link, ["50"], forecast_cents=None)
    assert alert.forecast_cents is None


@pytest.mark.parametrize(
    ("period", "levels"),
    [("2025-6", ["50"]), ("2025-13", ["50"]), ("June", ["50"]), ("2025-06", ["90"])],
)
def test_bad_period_or_level_is_refused(db: Database, period: str, levels: list[str]) -> None:
    link = make_link(db)
    with db.session() as session, pytest.raises(ValueError):
        record(session, link, levels, period=period)


def test_the_database_checks_the_level_too(db: Database) -> None:
    link = make_link(db)
    with db.session() as session:
        record(session, link, ["50"])
    with pytest.raises(IntegrityError), db.session() as session:
        # Raw SQL on the session's own connection (sqlmodel's `exec` is typed for ORM statements).
        session.connection().execute(text("UPDATE alert SET level = '90'"))


@pytest.mark.parametrize("racers", [2, 6])
def test_concurrent_records_insert_each_level_once(db: Database, racers: int) -> None:
    link = make_link(db)
    assert link.id is not None
    level_sets = [["50", "80", "100"], ["100", "80", "50"], ["80"], ["forecast", "50"]]

    def run(i: int) -> list[tuple[int | None, str]]:
        with db.session() as session:
            return [(a.id, a.level) for a in record(session, link, level_sets[i % 4])]

    results = run_together(racers, run)

    inserted = [row for rows in results for row in rows]
    expected = {level for i in range(racers) for level in level_sets[i % 4]}
    assert sorted(level for _, level in inserted) == sorted(expected)  # each level once overall
    with db.session() as session:
        stored = alerts.alerts_for_link(session, link_id=link.id)
    assert sorted((a.id, a.level) for a in stored) == sorted(inserted)


def test_losing_the_insert_race_keeps_the_callers_transaction(db: Database) -> None:
    """B records while A's insert of the same level is uncommitted: B gets nothing, no error.

    On PostgreSQL B's insert waits for A's unique key and then does nothing; B's
    earlier audit entry survives. On SQLite B waits for A's write lock up front.
    """
    link = make_link(db)
    pid_of_b: list[int] = []

    def b() -> list[str]:
        with db.session() as session:
            if db.dialect == "postgresql":
                pid = session.connection().execute(text("SELECT pg_backend_pid()")).scalar_one()
                pid_of_b.append(pid)
            audit.record(session, team_id="T1", channel_id="C1", user_id="UB", action="alert")
            return [a.level for a in record(session, link, ["50", "80"])]

    with Session(db.engine, expire_on_commit=False) as session_a, ThreadPoolExecutor(1) as pool:
        with session_a.begin():
            assert [a.level for a in record(session_a, link, ["50"])] == ["50"]
            b_result = pool.submit(b)
            if db.dialect == "postgresql":
                wait_until(lambda: blocked_on_lock(db, pid_of_b), what="B to wait on A's insert")
        b_levels = b_result.result(timeout=60)

    assert b_levels == ["80"]
    assert count_alerts(db) == 2
    with db.session() as session:
        assert [e.user_id for e in audit.entries(session)] == ["UB"]


def test_get_alert_and_set_outbox_key(db: Database) -> None:
    link = make_link(db)
    with db.session() as session:
        a50, a80, a100 = record(session, link, ["50", "80", "100"])
        assert alerts.set_outbox_key(session, ids=[a50.id, a80.id], key="alert:1:2025-06:80") == 2
        assert alerts.set_outbox_key(session, ids=[], key="alert:x") == 0
        with pytest.raises(ValueError):
            alerts.set_outbox_key(session, ids=[a100.id], key="k" * 161)
    with db.session() as session:
        keys = [stored_alert(session, a.id).outbox_key for a in (a50, a80, a100)]
        assert alerts.get_alert(session, id=a100.id + 1000) is None
    assert keys == ["alert:1:2025-06:80", "alert:1:2025-06:80", None]


def test_acknowledge_only_the_first_time(db: Database) -> None:
    link = make_link(db)
    with db.session() as session:
        [alert] = record(session, link, ["100"])

    with db.session() as session:
        first = alerts.acknowledge(session, id=alert.id, user_id="U1", now=T0)
        assert first is not None
        assert (first.acknowledged_by, first.acknowledged_at) == ("U1", T0)
    with db.session() as session:
        later = alerts.acknowledge(session, id=alert.id, user_id="U2", now=T0 + timedelta(hours=1))
        assert later is not None
        assert (later.acknowledged_by, later.acknowledged_at) == ("U1", T0)  # the first stands
        assert alerts.acknowledge(session, id=alert.id + 1000, user_id="U2") is None
        stored = stored_alert(session, alert.id)
    assert (stored.acknowledged_by, stored.acknowledged_at) == ("U1", T0)


def test_acknowledging_a_deleted_alert_says_it_is_gone(db: Database) -> None:
    link = make_link(db)
    with db.session() as session:
        [alert] = record(session, link, ["100"])
    with db.session() as session:
        links.remove_link(
            session, team_id=link.team_id, channel_id=link.channel_id, org_id=link.org_id
        )
    with db.session() as session:
        assert alerts.acknowledge(session, id=alert.id, user_id="U1", now=T0) is None


def test_concurrent_acknowledgements_have_one_winner(db: Database) -> None:
    link = make_link(db)
    with db.session() as session:
        [alert] = record(session, link, ["100"])

    def ack(i: int) -> str | None:
        with db.session() as session:
            acknowledged = alerts.acknowledge(session, id=alert.id, user_id=f"U{i}")
            assert acknowledged is not None
            return acknowledged.acknowledged_by

    results = run_together(5, ack)

    [winner] = set(results)  # every caller is told the same, first, acknowledger
    with db.session() as session:
        assert stored_alert(session, alert.id).acknowledged_by == winner


def test_snooze_and_snoozed_until(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    other = make_link(db, org_id=ORG_B)
    with db.session() as session:
        a50, a80 = record(session, link, ["50", "80"])
        [b50] = record(session, other, ["50"])
        assert alerts.snoozed_until(session, link_id=link.id, now=T0) is None

        assert alerts.snooze(session, id=a50.id, user_id="U1", until=T0 + timedelta(days=1))
        assert alerts.snooze(session, id=a80.id, user_id="U2", until=T0 + timedelta(hours=2))
        assert alerts.snooze(session, id=b50.id, user_id="U3", until=T0 + timedelta(days=9))
        assert not alerts.snooze(session, id=b50.id + 1000, user_id="U3", until=T0)

    with db.session() as session:
        latest = alerts.snoozed_until(session, link_id=link.id, now=T0)
        assert latest == T0 + timedelta(days=1) and latest.tzinfo is UTC
        assert (
            alerts.snoozed_until(session, link_id=link.id, now=T0 + timedelta(days=1)) is None
        )  # ended exactly now
        stored = stored_alert(session, a80.id)
        assert (stored.snoozed_by, stored.snoozed_until) == ("U2", T0 + timedelta(hours=2))

        # Snoozing again replaces the earlier snooze on that alert (here: shortens it).
        assert alerts.snooze(session, id=a50.id, user_id="U4", until=T0 + timedelta(hours=1))
        assert alerts.snoozed_until(session, link_id=link.id, now=T0) == T0 + timedelta(hours=2)
        assert alerts.snoozed_until(session, link_id=link.id, now=T0 + timedelta(hours=3)) is None
