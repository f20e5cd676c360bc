"""Channel links: add (idempotent, race-safe), remove, and the read side."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlmodel import Session, func, select

from storage import audit, links
from storage.db import Database
from storage.models import ChannelLink
from tests.storage.conftest import blocked_on_lock, run_together, wait_until

ORG_A = "5f1a2b3c4d5e6f7a8b9c0d1e"
ORG_B = "60aa00000000000000000001"


def count_links(db: Database) -> int:
    with db.session() as session:
        return session.exec(select(func.count()).select_from(ChannelLink)).one()


def test_add_link_creates_once_then_returns_the_existing_link(db: Database) -> None:
    with db.session() as session:
        first, created = links.add_link(
            session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="U1"
        )
    assert created and first.id is not None

    with db.session() as session:
        again, created_again = links.add_link(
            session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="U2"
        )
    assert not created_again
    assert again.id == first.id
    assert again.created_by == "U1"
    assert count_links(db) == 1


def test_same_org_in_other_channels_or_workspaces_is_a_separate_link(db: Database) -> None:
    with db.session() as session:
        for team, channel in [("T1", "C1"), ("T1", "C2"), ("T2", "C1")]:
            _, created = links.add_link(
                session, team_id=team, channel_id=channel, org_id=ORG_A, created_by="U1"
            )
            assert created
    assert count_links(db) == 3


def test_org_ids_are_validated_and_normalised(db: Database) -> None:
    with db.session() as session:
        link, _ = links.add_link(
            session, team_id="T1", channel_id="C1", org_id=ORG_A.upper(), created_by="U1"
        )
        assert link.org_id == ORG_A
        _, created = links.add_link(
            session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="U1"
        )
        assert not created
        for bad in ["", "xyz", ORG_A[:-1], ORG_A + "0", "g" * 24]:
            with pytest.raises(ValueError, match="24 hex digits"):
                links.add_link(session, team_id="T1", channel_id="C1", org_id=bad, created_by="U1")


def test_remove_link(db: Database) -> None:
    with db.session() as session:
        links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="U1")
        links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG_B, created_by="U1")

    with db.session() as session:
        assert links.remove_link(session, team_id="T1", channel_id="C1", org_id=ORG_A)
    with db.session() as session:
        assert not links.remove_link(session, team_id="T1", channel_id="C1", org_id=ORG_A)
        assert not links.remove_link(session, team_id="T1", channel_id="C9", org_id=ORG_B)
        remaining = links.links_for_channel(session, team_id="T1", channel_id="C1")
    assert [link.org_id for link in remaining] == [ORG_B]


def test_read_side(db: Database) -> None:
    with db.session() as session:
        links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG_B, created_by="U1")
        links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="U1")
        links.add_link(session, team_id="T1", channel_id="C2", org_id=ORG_A, created_by="U1")
        links.add_link(session, team_id="T2", channel_id="C1", org_id=ORG_A, created_by="U1")

    with db.session() as session:
        channel = links.links_for_channel(session, team_id="T1", channel_id="C1")
        everything = links.all_links(session)
        orgs = links.linked_org_ids(session)
        empty = links.links_for_channel(session, team_id="T3", channel_id="C1")

    assert [link.org_id for link in channel] == [ORG_B, ORG_A]  # in the order linked
    assert len(everything) == 4
    assert [link.org_id for link in everything] == [ORG_A, ORG_A, ORG_A, ORG_B]
    assert orgs == [ORG_A, ORG_B]
    assert empty == []


def test_concurrent_adds_of_the_same_link_create_it_once(db: Database) -> None:
    def add(i: int) -> tuple[int | None, bool]:
        with db.session() as session:
            link, created = links.add_link(
                session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by=f"U{i}"
            )
            return link.id, created

    results = run_together(6, add)

    assert sum(created for _, created in results) == 1
    assert len({link_id for link_id, _ in results}) == 1
    assert count_links(db) == 1


def test_losing_the_insert_race_keeps_the_callers_transaction(db: Database) -> None:
    """B checks for the link before A commits its insert: B must get A's link, not an error.

    On PostgreSQL, B's insert waits on A's uncommitted unique key and then fails;
    the savepoint undoes only that insert, so B's earlier audit entry survives.
    On SQLite, B waits for A's write lock up front and then finds the link.
    """
    pid_of_b: list[int] = []

    def b() -> tuple[int | None, bool]:
        with db.session() as session:
            if db.dialect == "postgresql":
                pid = session.connection().execute(text("SELECT pg_backend_pid()")).scalar_one()
                pid_of_b.append(pid)
            audit.record(session, team_id="T1", channel_id="C1", user_id="UB", action="link")
            link, created = links.add_link(
                session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="UB"
            )
            return link.id, created

    with Session(db.engine, expire_on_commit=False) as session_a, ThreadPoolExecutor(1) as pool:
        with session_a.begin():
            link_a, created_a = links.add_link(
                session_a, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="UA"
            )
            assert created_a
            b_result = pool.submit(b)
            if db.dialect == "postgresql":
                wait_until(lambda: blocked_on_lock(db, pid_of_b), what="B to wait on A's insert")
        id_b, created_b = b_result.result(timeout=60)

    assert (id_b, created_b) == (link_a.id, False)
    assert count_links(db) == 1
    with db.session() as session:
        assert [e.user_id for e in audit.entries(session)] == ["UB"]


def _states(db: Database) -> dict[tuple[str, str, str], str | None]:
    with db.session() as session:
        return {
            (r.team_id, r.channel_id, r.org_id): r.disabled_reason
            for r in session.exec(select(ChannelLink))
        }


def test_disabling_a_channel_touches_only_its_enabled_links_once(db: Database) -> None:
    with db.session() as session:
        for team, channel, org in [
            ("T1", "C1", ORG_A),
            ("T1", "C1", ORG_B),
            ("T1", "C2", ORG_A),
            ("T2", "C1", ORG_A),  # the same channel ID in another workspace
        ]:
            links.add_link(session, team_id=team, channel_id=channel, org_id=org, created_by="U")
    with db.session() as session:
        first = links.disable_channel(session, team_id="T1", channel_id="C1", reason="archived")
        again = links.disable_channel(session, team_id="T1", channel_id="C1", reason="other")
    assert [r.org_id for r in first] == sorted([ORG_A, ORG_B])
    assert all(r.disabled_at is not None for r in first)
    assert again == []  # already disabled: nothing to audit twice, the first reason stays
    assert _states(db) == {
        ("T1", "C1", ORG_A): "archived",
        ("T1", "C1", ORG_B): "archived",
        ("T1", "C2", ORG_A): None,
        ("T2", "C1", ORG_A): None,
    }


def test_enabling_undoes_only_the_given_reason_and_one_link_can_be_enabled(db: Database) -> None:
    with db.session() as session:
        a, _ = links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG_A, created_by="U")
        links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG_B, created_by="U")
        links.disable_channel(session, team_id="T1", channel_id="C1", reason="archived")
        assert a.id is not None
        link_a = a.id
    with db.session() as session:
        assert links.enable_channel(session, team_id="T1", channel_id="C1", reason="other") == []
    with db.session() as session:
        assert links.enable_link(session, link_id=link_a) is True
        assert links.enable_link(session, link_id=link_a) is False  # was not disabled any more
    with db.session() as session:
        enabled = links.enable_channel(session, team_id="T1", channel_id="C1", reason="archived")
    assert [r.org_id for r in enabled] == [ORG_B] and enabled[0].disabled_at is None
    assert set(_states(db).values()) == {None}
