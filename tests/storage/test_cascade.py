"""Unlinking a channel from an org deletes everything hanging off that link, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import func, select

from storage import alerts, costs, digests, links, outbox, thresholds
from storage.db import Database
from storage.models import Alert, ChannelLink, CostQuery, DigestSchedule, OutboxMessage, Threshold
from tests.storage.conftest import ORG_A, ORG_B, make_link

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def furnish(db: Database, link: ChannelLink, token: str) -> None:
    """A threshold, a schedule, alerts and a digest query for `link`."""
    assert link.id is not None
    with db.session() as session:
        thresholds.set_threshold(session, link_id=link.id, amount_cents=1000, updated_by="U")
        digests.set_schedule(
            session, link_id=link.id, day="1", hour=9, minute=0, next_run_at=T0, updated_by="U"
        )
        alerts.record_levels(
            session,
            link=link,
            period="2025-06",
            levels=["50", "80"],
            amount_cents=800,
            threshold_cents=1000,
            forecast_cents=1200,
        )
        costs.add_query(
            session,
            token=token,
            org_id=link.org_id,
            team_id=link.team_id,
            channel_id=link.channel_id,
            requested_by="U",
            params={},
            next_poll_at=T0,
            purpose="digest",
            link_id=link.id,
            digest_month="2025-05",
            digest_key=f"digest:{link.id}:2025-05",
        )


def counts(db: Database, link_id: int) -> dict[str, int]:
    with db.session() as session:
        return {
            model.__name__: session.exec(
                select(func.count()).select_from(model).where(model.link_id == link_id)
            ).one()
            for model in (Threshold, DigestSchedule, Alert, CostQuery)
        }


def test_remove_link_cascades_to_the_links_rows_only(db: Database) -> None:
    doomed = make_link(db, org_id=ORG_A)
    assert doomed.id is not None
    kept = make_link(db, org_id=ORG_B)
    assert kept.id is not None
    furnish(db, doomed, "a" * 64)
    furnish(db, kept, "b" * 64)
    with db.session() as session:
        chat = costs.add_query(
            session,
            token="c" * 64,
            org_id=ORG_A,
            team_id="T1",
            channel_id="C1",
            requested_by="U",
            params={},
            next_poll_at=T0,
        )
        outbox.enqueue(
            session, key=f"digest:{doomed.id}:2025-05", team_id="T1", channel_id="C1", payload={}
        )
    full = {"Threshold": 1, "DigestSchedule": 1, "Alert": 2, "CostQuery": 1}
    assert counts(db, doomed.id) == full

    with db.session() as session:
        assert links.remove_link(session, team_id="T1", channel_id="C1", org_id=ORG_A)

    assert counts(db, doomed.id) == dict.fromkeys(full, 0)
    assert counts(db, kept.id) == full
    with db.session() as session:
        assert chat.id is not None
        assert costs.get_query(session, id=chat.id) is not None  # not tied to a link
        # Outbox messages are not tied to links: one already queued is still posted.
        assert session.exec(select(func.count()).select_from(OutboxMessage)).one() == 1
