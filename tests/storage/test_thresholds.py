"""Thresholds: one per link, upserted, cleared, listed by org for the threshold job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select

from storage import thresholds
from storage.db import Database
from storage.models import Threshold
from tests.storage.conftest import ORG_A, ORG_B, make_link, run_together

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_set_replace_read_and_clear(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    with db.session() as session:
        assert thresholds.threshold_for(session, link_id=link.id) is None
        first = thresholds.set_threshold(
            session, link_id=link.id, amount_cents=500_000, updated_by="U1", now=T0
        )
    assert (first.link_id, first.amount_cents, first.updated_by, first.updated_at) == (
        link.id,
        500_000,
        "U1",
        T0,
    )

    with db.session() as session:
        second = thresholds.set_threshold(
            session,
            link_id=link.id,
            amount_cents=12_345_678_901_234,  # needs a BIGINT
            updated_by="U2",
            now=T0 + timedelta(days=1),
        )
    assert second.id == first.id
    with db.session() as session:
        stored = thresholds.threshold_for(session, link_id=link.id)
    assert stored is not None
    assert (stored.amount_cents, stored.updated_by, stored.updated_at) == (
        12_345_678_901_234,
        "U2",
        T0 + timedelta(days=1),
    )

    with db.session() as session:
        assert thresholds.clear_threshold(session, link_id=link.id)
    with db.session() as session:
        assert not thresholds.clear_threshold(session, link_id=link.id)
        assert thresholds.threshold_for(session, link_id=link.id) is None


@pytest.mark.parametrize("amount", [0, -1, 1.5, True])
def test_amount_must_be_positive_cents(db: Database, amount: object) -> None:
    link = make_link(db)
    assert link.id is not None
    with db.session() as session, pytest.raises(ValueError, match="positive"):
        thresholds.set_threshold(session, link_id=link.id, amount_cents=amount, updated_by="U")  # type: ignore[arg-type]


def test_the_database_checks_the_amount_too(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    with pytest.raises(IntegrityError), db.session() as session:
        session.add(Threshold(link_id=link.id, amount_cents=0, updated_by="U"))
        session.flush()


def test_threshold_for_an_unknown_link_is_refused(db: Database) -> None:
    with pytest.raises(IntegrityError), db.session() as session:
        thresholds.set_threshold(session, link_id=9999, amount_cents=100, updated_by="U")


def test_all_thresholds_by_org_then_link(db: Database) -> None:
    b1 = make_link(db, org_id=ORG_B, channel_id="C1")
    a1 = make_link(db, org_id=ORG_A, channel_id="C2")
    a2 = make_link(db, org_id=ORG_A, channel_id="C1")
    make_link(db, org_id=ORG_A, channel_id="C3")  # no threshold
    with db.session() as session:
        for link, amount in [(b1, 300), (a2, 200), (a1, 100)]:
            assert link.id is not None
            thresholds.set_threshold(session, link_id=link.id, amount_cents=amount, updated_by="U")

    with db.session() as session:
        rows = thresholds.all_thresholds(session)

    assert [(link.id, t.amount_cents) for link, t in rows] == [
        (a1.id, 100),
        (a2.id, 200),
        (b1.id, 300),
    ]
    assert all(t.link_id == link.id for link, t in rows)


def test_concurrent_sets_leave_one_row(db: Database) -> None:
    link = make_link(db)
    assert link.id is not None
    link_id = link.id

    def set_amount(i: int) -> int | None:
        with db.session() as session:
            return thresholds.set_threshold(
                session, link_id=link_id, amount_cents=100 + i, updated_by=f"U{i}"
            ).id

    assert len(set(run_together(6, set_amount))) == 1
    with db.session() as session:
        assert session.exec(select(func.count()).select_from(Threshold)).one() == 1
