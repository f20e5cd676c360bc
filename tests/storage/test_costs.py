"""Cost Explorer queries: storing, claiming under concurrency, leases, rescheduling, finishing once."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any, TypedDict, Unpack

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage import audit, costs
from storage.db import Database
from storage.errors import AlreadyExists, StorageError
from storage.models import CostQuery, QueryPurpose, QueryStatus
from tests.storage.conftest import make_link, run_together

ORG = "5f1a2b3c4d5e6f7a8b9c0d1e"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
_tokens = count(1)


class QueryFields(TypedDict, total=False):
    """The keyword arguments of `costs.add_query`."""

    token: str
    org_id: str
    team_id: str
    channel_id: str
    requested_by: str
    params: Mapping[str, Any]
    next_poll_at: datetime
    message_ts: str | None
    now: datetime | None
    purpose: QueryPurpose | str
    link_id: int | None
    digest_month: str | None
    digest_key: str | None


class DigestFields(TypedDict):
    """The digest keyword arguments of `costs.add_query`, less the `digest_key`."""

    purpose: str
    link_id: int | None
    digest_month: str


def add(db: Database, *, due: datetime = T0, **overrides: Unpack[QueryFields]) -> CostQuery:
    fields: QueryFields = {
        "token": f"{next(_tokens):064x}",
        "org_id": ORG,
        "team_id": "T1",
        "channel_id": "C1",
        "requested_by": "U1",
        "params": {"startDate": "2025-01-01", "endDate": "2025-02-01", "groupBy": "services"},
        "next_poll_at": due,
        "now": T0 - timedelta(minutes=1),
    } | overrides
    with db.session() as session:
        return costs.add_query(session, **fields)


def claim(db: Database, owner: str, *, now: datetime = T0, lease: float = 60, limit: int = 10):
    with db.session() as session:
        return costs.claim_due(session, now=now, owner=owner, lease_seconds=lease, limit=limit)


def load(db: Database, query_id: int) -> CostQuery:
    with db.session() as session:
        query = costs.get_query(session, id=query_id)
    assert query is not None
    return query


def test_add_query_stores_everything(db: Database) -> None:
    query = add(db, message_ts="1700000000.000100")
    assert query.id is not None

    stored = load(db, query.id)
    assert stored.status == QueryStatus.PENDING
    assert stored.attempts == 0
    assert stored.request_body() == {
        "startDate": "2025-01-01",
        "endDate": "2025-02-01",
        "groupBy": "services",
    }
    assert stored.message_ts == "1700000000.000100"
    assert stored.next_poll_at == T0
    assert stored.created_at == T0 - timedelta(minutes=1)
    assert (stored.finished_at, stored.error, stored.lease_owner, stored.lease_until) == (
        None,
        None,
        None,
        None,
    )


def test_tokens_are_checked_and_unique(db: Database) -> None:
    with pytest.raises(ValueError, match="token"):
        add(db, token="x" * 65)
    with pytest.raises(ValueError, match="token"):
        add(db, token="")
    add(db, token="a" * 64)
    with pytest.raises(IntegrityError):
        add(db, token="a" * 64)


def test_set_message(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    with db.session() as session:
        assert costs.set_message(session, id=query.id, message_ts="1700000000.000200")
        assert not costs.set_message(session, id=query.id + 1000, message_ts="1.2")
    assert load(db, query.id).message_ts == "1700000000.000200"


def test_claim_due_takes_only_due_unleased_pending_rows_in_due_order(db: Database) -> None:
    later = add(db, due=T0 - timedelta(seconds=5))
    earlier = add(db, due=T0 - timedelta(seconds=30))
    exactly_now = add(db, due=T0)
    add(db, due=T0 + timedelta(seconds=1))  # not due yet

    claimed = claim(db, "w1", lease=45)

    assert [q.id for q in claimed] == [earlier.id, later.id, exactly_now.id]
    for query in claimed:
        assert query.lease_owner == "w1"
        assert query.lease_until == T0 + timedelta(seconds=45)
        assert load(db, query.id).lease_owner == "w1"  # committed, not just in memory
    assert claim(db, "w2") == []


def test_claim_due_respects_the_limit(db: Database) -> None:
    for _ in range(5):
        add(db)
    assert len(claim(db, "w1", limit=2)) == 2
    assert len(claim(db, "w2", limit=10)) == 3
    assert claim(db, "w3") == []


@pytest.mark.parametrize("claimers", [2, 4])
def test_concurrent_claimers_get_each_due_row_exactly_once(db: Database, claimers: int) -> None:
    expected = {add(db).id for _ in range(40)}

    def worker(i: int) -> list[int]:
        mine: list[int] = []
        while batch := claim(db, f"worker-{i}", limit=3):
            mine += [q.id for q in batch if q.id is not None]
        return mine

    results = run_together(claimers, worker)

    claimed = [query_id for mine in results for query_id in mine]
    assert len(claimed) == len(set(claimed)), "a row was claimed twice"
    assert set(claimed) == expected


def test_an_expired_lease_can_be_taken_over(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    assert [q.id for q in claim(db, "w1", now=T0, lease=30)] == [query.id]

    assert claim(db, "w2", now=T0 + timedelta(seconds=29)) == []
    assert claim(db, "w2", now=T0 + timedelta(seconds=30)) == []  # lease_until is not < now yet
    taken = claim(db, "w2", now=T0 + timedelta(seconds=31), lease=30)
    assert [q.id for q in taken] == [query.id]
    assert taken[0].lease_owner == "w2"

    with db.session() as session:
        # w1 lost the row: it can neither finish nor reschedule it any more.
        assert not costs.finish(session, id=query.id, owner="w1", status="done")
        assert not costs.reschedule(
            session, id=query.id, owner="w1", next_poll_at=T0 + timedelta(minutes=5)
        )
        assert costs.finish(session, id=query.id, owner="w2", status="done")


def test_reschedule_releases_the_lease_and_counts_the_attempt(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    claim(db, "w1")
    next_poll = T0 + timedelta(seconds=10)

    with db.session() as session:
        assert costs.reschedule(session, id=query.id, owner="w1", next_poll_at=next_poll)

    stored = load(db, query.id)
    assert (stored.attempts, stored.next_poll_at) == (1, next_poll)
    assert (stored.lease_owner, stored.lease_until) == (None, None)
    assert stored.status == QueryStatus.PENDING
    assert claim(db, "w2", now=next_poll - timedelta(microseconds=1)) == []
    assert [q.id for q in claim(db, "w2", now=next_poll)] == [query.id]
    with db.session() as session:
        assert costs.reschedule(session, id=query.id, owner="w2", next_poll_at=next_poll)
    assert load(db, query.id).attempts == 2


def test_reschedule_needs_the_lease(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    with db.session() as session:
        assert not costs.reschedule(session, id=query.id, owner="w1", next_poll_at=T0)
    assert load(db, query.id).attempts == 0


def test_finish_succeeds_once(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    other = add(db)
    assert other.id is not None
    claim(db, "w1")
    finished_at = T0 + timedelta(seconds=3)

    with db.session() as session:
        assert costs.pending_count(session) == 2
        assert costs.finish(
            session,
            id=query.id,
            owner="w1",
            status=QueryStatus.FAILED,
            error="boom",
            now=finished_at,
        )
        assert not costs.finish(session, id=query.id, owner="w1", status="done")
        assert not costs.finish(session, id=query.id, owner="w2", status="done")
        assert costs.pending_count(session) == 1

    stored = load(db, query.id)
    assert (stored.status, stored.error, stored.finished_at) == ("failed", "boom", finished_at)
    assert stored.lease_owner is None
    assert load(db, other.id).status == QueryStatus.PENDING
    # A finished query is never claimed again, even once its lease would have run out.
    assert [q.id for q in claim(db, "w3", now=T0 + timedelta(hours=1))] == [other.id]


def test_finish_needs_a_final_status(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    claim(db, "w1")
    with db.session() as session:
        with pytest.raises(ValueError):
            costs.finish(session, id=query.id, owner="w1", status="pending")
        with pytest.raises(ValueError):
            costs.finish(session, id=query.id, owner="w1", status="bogus")
        assert costs.finish(session, id=query.id, owner="w1", status="expired")
    assert load(db, query.id).status == "expired"


def test_concurrent_finishes_record_one_result(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    query_id = query.id
    claim(db, "w1")

    def finish(_: int) -> bool:
        with db.session() as session:
            return costs.finish(session, id=query_id, owner="w1", status="done")

    assert sorted(run_together(4, finish)) == [False, False, False, True]


# --- digest queries ---------------------------------------------------------------------------


def test_chat_queries_have_no_digest_fields(db: Database) -> None:
    query = add(db)
    assert query.id is not None
    stored = load(db, query.id)
    assert (stored.purpose, stored.link_id, stored.digest_month, stored.digest_key) == (
        QueryPurpose.CHAT,
        None,
        None,
        None,
    )


def test_digest_query_fields_are_stored(db: Database) -> None:
    link = make_link(db)
    key = f"digest:{link.id}:2025-05"
    query = add(db, purpose="digest", link_id=link.id, digest_month="2025-05", digest_key=key)
    assert query.id is not None

    stored = load(db, query.id)
    assert (stored.purpose, stored.link_id, stored.digest_month, stored.digest_key) == (
        "digest",
        link.id,
        "2025-05",
        key,
    )
    with db.session() as session:
        stored_digest = costs.digest_query(session, digest_key=key)
        assert stored_digest is not None and stored_digest.id == query.id
        assert costs.digest_query(session, digest_key="digest:0:2025-05") is None


@pytest.mark.parametrize(
    "fields",
    [
        {"purpose": "report"},
        {"digest_month": "2025-5"},
        {"digest_month": "2025-00"},
        {"digest_key": ""},
        {"digest_key": "d" * 161},
    ],
)
def test_digest_fields_are_checked(db: Database, fields: dict) -> None:
    with pytest.raises(ValueError):
        add(db, **fields)


def test_a_duplicate_digest_key_raises_already_exists_and_keeps_the_transaction(
    db: Database,
) -> None:
    link = make_link(db)
    key = f"digest:{link.id}:2025-05"
    digest: DigestFields = {"purpose": "digest", "link_id": link.id, "digest_month": "2025-05"}
    first = add(db, digest_key=key, **digest)

    with db.session() as session:
        audit.record(session, team_id="T1", channel_id="C1", user_id="U1", action="digest")
        with pytest.raises(AlreadyExists) as info:
            costs.add_query(
                session,
                token="f" * 64,
                org_id=ORG,
                team_id="T1",
                channel_id="C1",
                requested_by="U1",
                params={},
                next_poll_at=T0,
                digest_key=key,
                **digest,
            )
        # The caller's transaction goes on: its earlier and later writes are committed.
        later = costs.add_query(
            session,
            token="e" * 64,
            org_id=ORG,
            team_id="T1",
            channel_id="C1",
            requested_by="U1",
            params={},
            next_poll_at=T0,
        )
    assert isinstance(info.value, StorageError) and info.value.key == key
    assert key in str(info.value)

    with db.session() as session:
        assert [e.action for e in audit.entries(session)] == ["digest"]
        stored_digest = costs.digest_query(session, digest_key=key)
        assert stored_digest is not None and stored_digest.id == first.id
        assert later.id is not None
        assert costs.get_query(session, id=later.id) is not None
        assert costs.pending_count(session) == 2


def test_concurrent_starts_of_the_same_digest_store_one_query(db: Database) -> None:
    link = make_link(db)
    key = f"digest:{link.id}:2025-05"

    def start(i: int) -> str:
        try:
            add(db, purpose="digest", link_id=link.id, digest_month="2025-05", digest_key=key)
        except AlreadyExists:
            return "exists"
        return "started"

    assert sorted(run_together(4, start)) == ["exists", "exists", "exists", "started"]
    with db.session() as session:
        assert costs.pending_count(session) == 1


def test_the_database_checks_the_purpose(db: Database) -> None:
    add(db)
    with pytest.raises(IntegrityError), db.session() as session:
        # Raw SQL on the session's own connection (sqlmodel's `exec` is typed for ORM statements).
        session.connection().execute(text("UPDATE cost_query SET purpose = 'report'"))


def test_a_digest_query_needs_an_existing_link(db: Database) -> None:
    with pytest.raises(IntegrityError):
        add(db, purpose="digest", link_id=9999, digest_month="2025-05", digest_key="digest:x")
