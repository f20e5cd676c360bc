"""Digest schedules: upsert, reads, due runs, and `advance` as the one-winner claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import TypedDict, Unpack

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select

import storage.digests
from storage import links
from storage.db import Database
from storage.models import DigestSchedule
from tests.storage.conftest import ORG_A, ORG_B, make_link, run_together

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)


class ScheduleFields(TypedDict, total=False):
    """The keyword arguments of `storage.digests.set_schedule` but `link_id` and `next_run_at`."""

    day: str
    hour: int
    minute: int
    updated_by: str
    timezone: str
    now: datetime | None


def schedule(
    db: Database, link_id: int, *, next_run_at: datetime = T0, **fields: Unpack[ScheduleFields]
):
    values: ScheduleFields = {"day": "1", "hour": 9, "minute": 0, "updated_by": "U1"} | fields
    with db.session() as session:
        return storage.digests.set_schedule(
            session, link_id=link_id, next_run_at=next_run_at, **values
        )


def load(db: Database, link_id: int) -> DigestSchedule:
    with db.session() as session:
        stored = storage.digests.schedule_for(session, link_id=link_id)
    assert stored is not None
    return stored


def test_set_replace_read_and_clear(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    with db.session() as session:
        assert storage.digests.schedule_for(session, link_id=link.id) is None

    first = schedule(db, link.id, day="last", hour=17, minute=30, timezone="Europe/Berlin")
    stored = load(db, link.id)
    assert (stored.id, stored.day, stored.hour, stored.minute, stored.timezone) == (
        first.id,
        "last",
        17,
        30,
        "Europe/Berlin",
    )
    assert stored.next_run_at == T0

    second = schedule(db, link.id, day="15", next_run_at=T0 + timedelta(days=14), updated_by="U2")
    assert second.id == first.id
    stored = load(db, link.id)
    assert (stored.day, stored.timezone, stored.updated_by) == ("15", "UTC", "U2")
    assert stored.next_run_at == T0 + timedelta(days=14)

    with db.session() as session:
        assert storage.digests.clear_schedule(session, link_id=link.id)
    with db.session() as session:
        assert not storage.digests.clear_schedule(session, link_id=link.id)
        assert storage.digests.schedule_for(session, link_id=link.id) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"day": "0"},
        {"day": "32"},
        {"day": "first"},
        {"hour": 24},
        {"hour": -1},
        {"minute": 60},
        {"timezone": ""},
        {"timezone": "x" * 65},
    ],
)
def test_bad_schedules_are_refused(db: Database, fields: dict) -> None:
    link = make_link(db)
    assert link.id is not None
    with pytest.raises(ValueError):
        schedule(db, link.id, **fields)


def test_day_is_normalised(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    assert schedule(db, link.id, day=" LAST ").day == "last"


@pytest.mark.parametrize(
    ("column", "value"), [("day", "'32'"), ("day", "'0'"), ("hour", "24"), ("minute", "-1")]
)
def test_the_database_checks_the_ranges_too(db: Database, column: str, value: str) -> None:
    link = make_link(db)
    assert link.id is not None
    schedule(db, link.id)
    with pytest.raises(IntegrityError), db.session() as session:
        # Raw SQL on the session's own connection (sqlmodel's `exec` is typed for ORM statements).
        session.connection().execute(text(f"UPDATE digest_schedule SET {column} = {value}"))


def test_schedules_for_channel(db: Database) -> None:
    b = make_link(db, org_id=ORG_B, channel_id="C1")
    assert b.id is not None
    a = make_link(db, org_id=ORG_A, channel_id="C1")
    assert a.id is not None
    make_link(db, org_id=ORG_A, channel_id="C2")  # scheduled, but another channel
    unscheduled = make_link(db, org_id=ORG_A, channel_id="C3")
    schedule(db, a.id, day="2")
    schedule(db, b.id, day="1")
    with db.session() as session:
        other = links.links_for_channel(session, team_id="T1", channel_id="C2")[0]
    assert other.id is not None
    schedule(db, other.id)

    with db.session() as session:
        rows = storage.digests.schedules_for_channel(session, team_id="T1", channel_id="C1")
        none = storage.digests.schedules_for_channel(session, team_id="T1", channel_id="C3")
    assert [(link.id, s.day) for link, s in rows] == [(b.id, "1"), (a.id, "2")]  # order linked
    assert none == [] and unscheduled.id is not None


def test_due_schedules_oldest_first_with_limit(db: Database) -> None:
    late = make_link(db, channel_id="C1")
    assert late.id is not None
    early = make_link(db, channel_id="C2")
    assert early.id is not None
    exactly = make_link(db, channel_id="C3")
    assert exactly.id is not None
    future = make_link(db, channel_id="C4")
    assert future.id is not None
    schedule(db, late.id, next_run_at=T0 - timedelta(minutes=1))
    schedule(db, early.id, next_run_at=T0 - timedelta(days=1))
    schedule(db, exactly.id, next_run_at=T0)
    schedule(db, future.id, next_run_at=T0 + timedelta(microseconds=1))

    with db.session() as session:
        due = storage.digests.due_schedules(session, now=T0, limit=10)
        two = storage.digests.due_schedules(session, now=T0, limit=2)
    assert [link.id for link, _ in due] == [early.id, late.id, exactly.id]
    assert all(s.link_id == link.id for link, s in due)
    assert [link.id for link, _ in two] == [early.id, late.id]


def test_advance_moves_on_only_from_the_value_seen(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    sched = schedule(db, link.id)
    nxt = T0 + timedelta(days=30)

    with db.session() as session:
        assert not storage.digests.advance(
            session, schedule_id=sched.id, seen=T0 - timedelta(seconds=1), next_run_at=nxt
        )
        assert storage.digests.advance(session, schedule_id=sched.id, seen=T0, next_run_at=nxt)
        assert not storage.digests.advance(session, schedule_id=sched.id, seen=T0, next_run_at=nxt)
        assert not storage.digests.advance(
            session, schedule_id=sched.id + 99, seen=nxt, next_run_at=T0
        )
    assert load(db, link.id).next_run_at == nxt
    with db.session() as session:
        assert storage.digests.due_schedules(session, now=T0 + timedelta(days=1), limit=10) == []


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2025, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2025, 3, 1, 0, 0, tzinfo=UTC),  # no fractional part
        datetime(2025, 3, 1, 9, 0, 0, 1, tzinfo=timezone(timedelta(hours=9))),
        datetime(2025, 10, 26, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    ],
)
def test_a_next_run_at_read_back_compares_equal_in_sql(db: Database, moment: datetime) -> None:
    """`advance(seen=...)` compares in SQL: the stored form must equal the value read back.

    Also the original value in another offset (the same instant), but not one
    microsecond off.
    """
    link = make_link(db)
    assert link.id is not None
    sched = schedule(db, link.id, next_run_at=moment)

    with db.session() as session:  # what the digests job sees
        [(_, due)] = storage.digests.due_schedules(session, now=moment, limit=10)
    assert due.next_run_at == moment and due.next_run_at.tzinfo is UTC

    with db.session() as session:
        off = due.next_run_at + timedelta(microseconds=1)
        assert not storage.digests.advance(session, schedule_id=sched.id, seen=off, next_run_at=off)
        assert storage.digests.advance(
            session, schedule_id=sched.id, seen=due.next_run_at, next_run_at=moment
        )  # back to the same value
        assert storage.digests.advance(session, schedule_id=sched.id, seen=moment, next_run_at=off)
        assert storage.digests.advance(
            session,
            schedule_id=sched.id,
            seen=off.astimezone(timezone(timedelta(hours=5, minutes=45))),
            next_run_at=moment,
        )


@pytest.mark.parametrize("racers", [2, 6])
def test_concurrent_advances_from_the_same_value_have_one_winner(db: Database, racers: int) -> None:
    link = make_link(db)
    assert link.id is not None
    sched = schedule(db, link.id)
    with db.session() as session:
        [(_, due)] = storage.digests.due_schedules(session, now=T0, limit=1)

    def claim(i: int) -> bool:
        with db.session() as session:
            return storage.digests.advance(
                session,
                schedule_id=sched.id,
                seen=due.next_run_at,
                next_run_at=T0 + timedelta(days=30, minutes=i),
            )

    results = run_together(racers, claim)

    assert sorted(results) == [False] * (racers - 1) + [True]
    winner = results.index(True)
    assert load(db, link.id).next_run_at == T0 + timedelta(days=30, minutes=winner)


def test_replicas_running_the_digest_job_start_each_run_once(db: Database) -> None:
    """Each worker reads due schedules and advances them; every (schedule, run) is won once."""
    ids = []
    for i in range(8):
        link = make_link(db, channel_id=f"C{i}")
        assert link.id is not None
        ids.append(schedule(db, link.id, next_run_at=T0 - timedelta(minutes=i)).id)

    def job(i: int) -> list[tuple[int, datetime]]:
        won = []
        with db.session() as session:
            due = storage.digests.due_schedules(session, now=T0, limit=100)
        for _, sched in due:
            assert sched.id is not None
            with db.session() as session:
                if storage.digests.advance(
                    session,
                    schedule_id=sched.id,
                    seen=sched.next_run_at,
                    next_run_at=sched.next_run_at + timedelta(days=31),
                ):
                    won.append((sched.id, sched.next_run_at))
        return won

    results = run_together(4, job)

    wins = [w for won in results for w in won]
    assert sorted(wins) == sorted(set(wins))
    assert sorted(schedule_id for schedule_id, _ in wins) == sorted(ids)
    with db.session() as session:
        assert storage.digests.due_schedules(session, now=T0, limit=100) == []
        assert session.exec(select(func.count()).select_from(DigestSchedule)).one() == 8


def test_schedule_for_an_unknown_link_is_refused(db: Database) -> None:
    with pytest.raises(IntegrityError):
        schedule(db, 9999)
