"""The audit log: record, then read back newest first with filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage import audit
from storage.db import Database

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_record_and_read_back(db: Database) -> None:
    with db.session() as session:
        entry = audit.record(
            session,
            team_id="T1",
            channel_id="C1",
            user_id="U1",
            action="link",
            detail={"org_id": "5f1a2b3c4d5e6f7a8b9c0d1e", "checked": True},
            at=T0,
        )
    assert entry.id is not None

    with db.session() as session:
        [stored] = audit.entries(session)
    assert (stored.id, stored.at, stored.action, stored.user_id) == (entry.id, T0, "link", "U1")
    assert stored.details() == {"org_id": "5f1a2b3c4d5e6f7a8b9c0d1e", "checked": True}


def test_entries_newest_first_with_filters_and_limit(db: Database) -> None:
    rows = [
        ("T1", "C1", "link", 0),
        ("T1", "C2", "link", 1),
        ("T1", "C1", "unlink", 2),
        ("T2", "C1", "link", 3),
    ]
    with db.session() as session:
        for team, channel, action, minutes in rows:
            audit.record(
                session,
                team_id=team,
                channel_id=channel,
                user_id="U1",
                action=action,
                at=T0 + timedelta(minutes=minutes),
            )

    def minutes_of(entries) -> list[int]:
        return [int((e.at - T0).total_seconds() // 60) for e in entries]

    with db.session() as session:
        assert minutes_of(audit.entries(session)) == [3, 2, 1, 0]
        assert minutes_of(audit.entries(session, limit=2)) == [3, 2]
        assert minutes_of(audit.entries(session, team_id="T1")) == [2, 1, 0]
        assert minutes_of(audit.entries(session, team_id="T1", channel_id="C1")) == [2, 0]
        assert minutes_of(audit.entries(session, action="link")) == [3, 1, 0]
        assert audit.entries(session, team_id="T9") == []
        assert audit.entries(session, action="link")[0].details() == {}
