"""Revision 0002 on a database with data: rows survive, defaults fill in, constraints hold."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from storage import costs, links, thresholds
from storage.db import Database, alembic_config, upgrade
from storage.models import QueryPurpose
from tests.storage.conftest import ORG_A

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NEW_TABLES = {"channel_config", "threshold", "digest_schedule", "alert", "outbox"}


@pytest.fixture
def empty(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        database.dispose()


@contextmanager
def migrating(db: Database) -> Iterator[Connection]:
    """A connection to run Alembic commands on, as `storage.db.upgrade` prepares one."""
    with db.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        if db.dialect == "sqlite":
            raw.execute("PRAGMA foreign_keys = OFF")  # batch mode rebuilds tables
        try:
            with conn.begin():
                yield conn
        finally:
            if db.dialect == "sqlite":
                raw.execute("PRAGMA foreign_keys = ON")


def migrate_to(db: Database, revision: str) -> None:
    with migrating(db) as conn:
        config = alembic_config(conn)
        if revision == "0001" and _current(conn) not in (None, "0001"):
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def insert_at_0001(db: Database) -> None:
    """A link and a pending chat query written with the 0001 schema (reflected, not the models)."""
    with db.engine.begin() as conn:
        tables = MetaData()
        tables.reflect(conn, only=["channel_link", "cost_query"])
        conn.execute(
            tables.tables["channel_link"].insert(),
            {
                "team_id": "T1",
                "channel_id": "C1",
                "org_id": ORG_A,
                "created_by": "U1",
                "created_at": T0,
            },
        )
        conn.execute(
            tables.tables["cost_query"].insert(),
            {
                "token": "a" * 64,
                "org_id": ORG_A,
                "team_id": "T1",
                "channel_id": "C1",
                "requested_by": "U1",
                "params": '{"groupBy":"services"}',
                "message_ts": "1700000000.000100",
                "status": "pending",
                "attempts": 2,
                "next_poll_at": T0,
                "created_at": T0,
            },
        )


def test_upgrade_from_0001_keeps_the_rows_and_fills_the_defaults(empty: Database) -> None:
    migrate_to(empty, "0001")
    assert not NEW_TABLES & set(inspect(empty.engine).get_table_names())
    insert_at_0001(empty)

    upgrade(empty.engine)

    assert set(inspect(empty.engine).get_table_names()) >= NEW_TABLES
    with empty.session() as session:
        [link] = links.all_links(session)
        [query] = costs.claim_due(session, now=T0, owner="w1", lease_seconds=60, limit=10)
    assert (link.org_id, link.created_at) == (ORG_A, T0)
    assert (query.token, query.status, query.attempts, query.message_ts) == (
        "a" * 64,
        "pending",
        2,
        "1700000000.000100",
    )
    assert query.request_body() == {"groupBy": "services"}
    assert (query.next_poll_at, query.created_at) == (T0, T0)
    assert (query.purpose, query.link_id, query.digest_month, query.digest_key) == (
        QueryPurpose.CHAT,
        None,
        None,
        None,
    )
    # The new tables work with the old link.
    assert link.id is not None
    with empty.session() as session:
        thresholds.set_threshold(session, link_id=link.id, amount_cents=100, updated_by="U")


@pytest.mark.parametrize(
    ("statement", "what"),
    [
        ("UPDATE cost_query SET status = 'lost'", "the status check from 0001"),
        ("UPDATE cost_query SET purpose = 'report'", "the purpose check"),
        ("UPDATE cost_query SET link_id = 9999", "the link foreign key"),
        (
            "INSERT INTO cost_query (token, org_id, team_id, channel_id, requested_by, params, "
            "status, attempts, next_poll_at, created_at) SELECT token, org_id, team_id, "
            "channel_id, requested_by, params, status, attempts, next_poll_at, created_at "
            "FROM cost_query",
            "the token's uniqueness",
        ),
    ],
)
def test_the_rebuilt_cost_query_table_keeps_its_constraints(
    empty: Database, statement: str, what: str
) -> None:
    migrate_to(empty, "0001")
    insert_at_0001(empty)
    upgrade(empty.engine)
    with pytest.raises(IntegrityError), empty.session() as session:
        # Raw SQL on the session's own connection (sqlmodel's `exec` is typed for ORM statements).
        session.connection().execute(text(statement))
        pytest.fail(f"{what} is missing")


def test_downgrade_to_0001_and_back(empty: Database) -> None:
    migrate_to(empty, "0001")
    insert_at_0001(empty)
    upgrade(empty.engine)
    with empty.session() as session:
        [link] = links.all_links(session)
        costs.add_query(
            session,
            token="d" * 64,
            org_id=ORG_A,
            team_id="T1",
            channel_id="C1",
            requested_by="U1",
            params={},
            next_poll_at=T0,
            purpose="digest",
            link_id=link.id,
            digest_month="2025-05",
            digest_key=f"digest:{link.id}:2025-05",
        )

    migrate_to(empty, "0001")

    assert not NEW_TABLES & set(inspect(empty.engine).get_table_names())
    columns = {c["name"] for c in inspect(empty.engine).get_columns("cost_query")}
    assert not {"purpose", "link_id", "digest_month", "digest_key"} & columns
    with empty.engine.connect() as conn:
        # The chat query stays; the digest query has no meaning at 0001 and goes.
        assert conn.execute(text("SELECT token FROM cost_query")).scalars().all() == ["a" * 64]
        assert conn.execute(text("SELECT count(*) FROM channel_link")).scalar() == 1

    upgrade(empty.engine)
    with empty.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    with empty.session() as session:
        claimed = costs.claim_due(session, now=T0, owner="w", lease_seconds=1, limit=5)
    assert [q.token for q in claimed] == ["a" * 64]
