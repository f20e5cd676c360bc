"""Channel settings: the on-call target, set, replaced, cleared, and upserted under races."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select

from storage import channel_config
from storage.db import Database
from storage.models import ChannelConfig
from tests.storage.conftest import run_together

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_no_config_until_set(db: Database) -> None:
    with db.session() as session:
        assert channel_config.get_config(session, team_id="T1", channel_id="C1") is None


def test_set_replace_and_clear_the_oncall_target(db: Database) -> None:
    with db.session() as session:
        first = channel_config.set_oncall(
            session,
            team_id="T1",
            channel_id="C1",
            kind="user",
            target_id="U123",
            updated_by="U1",
            now=T0,
        )
    assert (first.oncall_kind, first.oncall_id, first.updated_by, first.updated_at) == (
        "user",
        "U123",
        "U1",
        T0,
    )

    later = T0 + timedelta(hours=1)
    with db.session() as session:
        replaced = channel_config.set_oncall(
            session,
            team_id="T1",
            channel_id="C1",
            kind="usergroup",
            target_id="S0614TZR7",
            updated_by="U2",
            now=later,
        )
    assert replaced.id == first.id
    with db.session() as session:
        stored = channel_config.get_config(session, team_id="T1", channel_id="C1")
    assert stored is not None
    assert (stored.oncall_kind, stored.oncall_id, stored.updated_by, stored.updated_at) == (
        "usergroup",
        "S0614TZR7",
        "U2",
        later,
    )

    with db.session() as session:
        cleared = channel_config.set_oncall(
            session,
            team_id="T1",
            channel_id="C1",
            kind=None,
            target_id="ignored",
            updated_by="U3",
        )
    assert (cleared.id, cleared.oncall_kind, cleared.oncall_id, cleared.updated_by) == (
        first.id,
        None,
        None,
        "U3",
    )


def test_channels_and_workspaces_are_separate(db: Database) -> None:
    with db.session() as session:
        for team, channel, target in [("T1", "C1", "U1"), ("T1", "C2", "U2"), ("T2", "C1", "U3")]:
            channel_config.set_oncall(
                session,
                team_id=team,
                channel_id=channel,
                kind="user",
                target_id=target,
                updated_by="U",
            )
    with db.session() as session:
        targets = {
            (team, channel): getattr(
                channel_config.get_config(session, team_id=team, channel_id=channel),
                "oncall_id",
                None,
            )
            for team, channel in [("T1", "C1"), ("T1", "C2"), ("T2", "C1"), ("T2", "C2")]
        }
    assert targets == {
        ("T1", "C1"): "U1",
        ("T1", "C2"): "U2",
        ("T2", "C1"): "U3",
        ("T2", "C2"): None,
    }


@pytest.mark.parametrize(
    ("kind", "target"), [("team", "U1"), ("user", None), ("user", ""), ("usergroup", "S" * 33)]
)
def test_bad_targets_are_refused(db: Database, kind: str, target: str | None) -> None:
    with db.session() as session, pytest.raises(ValueError):
        channel_config.set_oncall(
            session, team_id="T1", channel_id="C1", kind=kind, target_id=target, updated_by="U"
        )


@pytest.mark.parametrize(("kind", "target"), [("team", "U1"), ("user", None), (None, "U1")])
def test_the_database_checks_kind_and_target_too(
    db: Database, kind: str | None, target: str | None
) -> None:
    with pytest.raises(IntegrityError), db.session() as session:
        session.add(
            ChannelConfig(
                team_id="T1", channel_id="C1", oncall_kind=kind, oncall_id=target, updated_by="U"
            )
        )
        session.flush()


def test_concurrent_sets_leave_one_row(db: Database) -> None:
    def set_target(i: int) -> int | None:
        with db.session() as session:
            return channel_config.set_oncall(
                session,
                team_id="T1",
                channel_id="C1",
                kind="user",
                target_id=f"U{i}",
                updated_by=f"U{i}",
            ).id

    ids = run_together(6, set_target)

    assert len(set(ids)) == 1
    with db.session() as session:
        assert session.exec(select(func.count()).select_from(ChannelConfig)).one() == 1
        stored = channel_config.get_config(session, team_id="T1", channel_id="C1")
    assert stored is not None and stored.oncall_id == stored.updated_by  # one writer's whole row
