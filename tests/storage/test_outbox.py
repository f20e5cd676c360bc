"""The outbox: idempotent enqueue, claims with leases and attempts, sent/retry/failed once."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any, TypedDict, Unpack

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from storage import audit, outbox
from storage.db import Database
from storage.models import OutboxMessage, OutboxStatus
from tests.storage.conftest import blocked_on_lock, run_together, wait_until

T0 = datetime(2025, 7, 1, 9, 0, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
_keys = count(1)


class MessageOverrides(TypedDict, total=False):
    """The keyword arguments of `outbox.enqueue` but `key`."""

    team_id: str
    channel_id: str
    payload: Mapping[str, Any]
    attachment: bytes | None
    attachment_name: str | None
    not_before: datetime | None
    now: datetime | None


class MessageFields(MessageOverrides, total=False):
    """All the keyword arguments of `outbox.enqueue`."""

    key: str


def enqueue(
    db: Database, *, key: str | None = None, **overrides: Unpack[MessageOverrides]
) -> tuple[OutboxMessage, bool]:
    fields: MessageFields = {
        "key": key or f"digest:{next(_keys)}:2025-06",
        "team_id": "T1",
        "channel_id": "C1",
        "payload": {"text": "June digest", "blocks": [{"type": "divider"}], "metadata": {}},
        "now": T0 - timedelta(minutes=1),
        "not_before": T0,
        **overrides,
    }
    with db.session() as session:
        return outbox.enqueue(session, **fields)


def claim(db: Database, owner: str, *, now: datetime = T0, lease: float = 60, limit: int = 10):
    with db.session() as session:
        return outbox.claim_due(session, now=now, owner=owner, lease_seconds=lease, limit=limit)


def load(db: Database, key: str) -> OutboxMessage:
    with db.session() as session:
        message = outbox.get_message(session, key=key)
    assert message is not None
    return message


def count_messages(db: Database) -> int:
    with db.session() as session:
        return session.exec(select(func.count()).select_from(OutboxMessage)).one()


def test_enqueue_stores_everything(db: Database) -> None:
    payload = {
        "text": "Spend passed 80 %",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*80 %*"}}],
        "metadata": {"event_type": "alert", "event_payload": {"link": 1}},
    }
    message, created = enqueue(
        db, key="alert:1:2025-06:80", payload=payload, attachment=PNG, attachment_name="c.png"
    )
    assert created and message.id is not None

    stored = load(db, "alert:1:2025-06:80")
    assert stored.message() == payload
    assert (stored.team_id, stored.channel_id) == ("T1", "C1")
    assert (stored.attachment, stored.attachment_name) == (PNG, "c.png")
    assert (stored.status, stored.attempts) == (OutboxStatus.PENDING, 0)
    assert (stored.not_before, stored.created_at) == (T0, T0 - timedelta(minutes=1))
    for empty in ("file_id", "lease_until", "lease_owner", "message_ts", "sent_at", "last_error"):
        assert getattr(stored, empty) is None, empty


def test_not_before_defaults_to_now(db: Database) -> None:
    message, _ = enqueue(db, not_before=None, now=T0 + timedelta(seconds=5))
    assert message.not_before == T0 + timedelta(seconds=5)
    assert message.attachment is None


def test_enqueue_checks_its_input(db: Database) -> None:
    with pytest.raises(ValueError, match="key"):
        enqueue(db, key="k" * 161)
    with pytest.raises(ValueError, match="attachment_name"):
        enqueue(db, attachment=PNG)
    assert count_messages(db) == 0


def test_the_database_checks_the_status(db: Database) -> None:
    enqueue(db)
    with pytest.raises(IntegrityError), db.session() as session:
        # Raw SQL on the session's own connection (sqlmodel's `exec` is typed for ORM statements).
        session.connection().execute(text("UPDATE outbox SET status = 'lost'"))


def test_enqueue_twice_returns_the_first_message(db: Database) -> None:
    first, created = enqueue(db, key="digest:7:2025-06", payload={"text": "first"})
    again, created_again = enqueue(db, key="digest:7:2025-06", payload={"text": "second"})
    assert created and not created_again
    assert again.id == first.id
    assert again.message() == {"text": "first"}
    assert count_messages(db) == 1


def test_concurrent_enqueues_of_the_same_key_store_one_message(db: Database) -> None:
    def put(i: int) -> tuple[int | None, bool, str]:
        message, created = enqueue(db, key="alert:3:2025-06:100", payload={"text": f"from {i}"})
        return message.id, created, message.message()["text"]

    results = run_together(6, put)

    assert sum(created for _, created, _ in results) == 1
    assert len({message_id for message_id, _, _ in results}) == 1
    [winner] = [text for _, created, text in results if created]
    assert {text for _, _, text in results} == {winner}  # the losers got the winner's message
    assert count_messages(db) == 1


def test_losing_the_enqueue_race_keeps_the_callers_transaction(db: Database) -> None:
    """B enqueues while A's insert of the same key is uncommitted: B gets A's message.

    On PostgreSQL B's insert waits for A's unique key, then does nothing, and
    B's read sees A's committed row; B's earlier audit entry survives. On SQLite B
    waits for A's write lock up front.
    """
    pid_of_b: list[int] = []
    key = "digest:9:2025-06"

    def b() -> tuple[int | None, bool]:
        with db.session() as session:
            if db.dialect == "postgresql":
                pid = session.connection().execute(text("SELECT pg_backend_pid()")).scalar_one()
                pid_of_b.append(pid)
            audit.record(session, team_id="T1", channel_id="C1", user_id="UB", action="digest")
            message, created = outbox.enqueue(
                session, key=key, team_id="T1", channel_id="C1", payload={"text": "B"}
            )
            return message.id, created

    with Session(db.engine, expire_on_commit=False) as session_a, ThreadPoolExecutor(1) as pool:
        with session_a.begin():
            message_a, created_a = outbox.enqueue(
                session_a, key=key, team_id="T1", channel_id="C1", payload={"text": "A"}
            )
            assert created_a
            b_result = pool.submit(b)
            if db.dialect == "postgresql":
                wait_until(lambda: blocked_on_lock(db, pid_of_b), what="B to wait on A's insert")
        id_b, created_b = b_result.result(timeout=60)

    assert (id_b, created_b) == (message_a.id, False)
    assert load(db, key).message() == {"text": "A"}
    with db.session() as session:
        assert [e.user_id for e in audit.entries(session)] == ["UB"]


def test_claim_due_takes_due_unleased_pending_messages_oldest_first(db: Database) -> None:
    later, _ = enqueue(db, not_before=T0 - timedelta(seconds=5))
    earlier, _ = enqueue(db, not_before=T0 - timedelta(minutes=5))
    exactly, _ = enqueue(db, not_before=T0)
    enqueue(db, not_before=T0 + timedelta(microseconds=1))  # not due yet

    claimed = claim(db, "w1", lease=45)

    assert [m.id for m in claimed] == [earlier.id, later.id, exactly.id]
    for message in claimed:
        assert (message.lease_owner, message.lease_until, message.attempts) == (
            "w1",
            T0 + timedelta(seconds=45),
            1,
        )
        stored = load(db, message.key)  # committed, not just in memory
        assert (stored.lease_owner, stored.attempts) == ("w1", 1)
    assert claim(db, "w2") == []
    assert len(claim(db, "w2", limit=1, now=T0 + timedelta(minutes=1))) == 1  # leases ran out


@pytest.mark.parametrize("claimers", [2, 4])
def test_concurrent_claimers_get_each_message_exactly_once(db: Database, claimers: int) -> None:
    expected = {enqueue(db)[0].id for _ in range(40)}

    def worker(i: int) -> list[int]:
        mine: list[int] = []
        while batch := claim(db, f"worker-{i}", limit=3):
            mine += [m.id for m in batch if m.id is not None]
        return mine

    results = run_together(claimers, worker)

    claimed = [message_id for mine in results for message_id in mine]
    assert len(claimed) == len(set(claimed)), "a message was claimed twice"
    assert set(claimed) == expected
    with db.session() as session:
        attempts = session.exec(select(OutboxMessage.attempts).distinct()).all()
    assert attempts == [1]


def test_an_expired_lease_is_taken_over_and_counted(db: Database) -> None:
    message, _ = enqueue(db)
    assert message.id is not None
    [first] = claim(db, "w1", lease=30)
    assert first.attempts == 1

    assert claim(db, "w2", now=T0 + timedelta(seconds=30)) == []  # lease_until is not < now
    [taken] = claim(db, "w2", now=T0 + timedelta(seconds=31))
    assert (taken.id, taken.lease_owner, taken.attempts) == (message.id, "w2", 2)

    with db.session() as session:
        # w1 lost the message: it can no longer record anything about it.
        assert not outbox.set_file(session, id=message.id, owner="w1", file_id="F1")
        assert not outbox.mark_sent(session, id=message.id, owner="w1", message_ts="1.1")
        assert not outbox.retry_later(
            session, id=message.id, owner="w1", not_before=T0, error="timeout"
        )
        assert not outbox.mark_failed(session, id=message.id, owner="w1", error="boom")
        assert outbox.mark_sent(session, id=message.id, owner="w2", message_ts="1.2")


def test_send_with_attachment_then_mark_sent_once(db: Database) -> None:
    message, _ = enqueue(db, attachment=PNG, attachment_name="chart.png")
    assert message.id is not None
    other, _ = enqueue(db)
    assert other.id is not None
    claim(db, "w1")
    sent_at = T0 + timedelta(seconds=2)

    with db.session() as session:
        assert outbox.pending_count(session) == 2
        assert outbox.set_file(session, id=message.id, owner="w1", file_id="F0123ABCD")
        assert outbox.mark_sent(
            session, id=message.id, owner="w1", message_ts="1700000000.000100", now=sent_at
        )
        assert not outbox.mark_sent(session, id=message.id, owner="w1", message_ts="2.0")
        assert not outbox.set_file(session, id=message.id, owner="w1", file_id="F2")
        assert outbox.pending_count(session) == 1

    stored = load(db, message.key)
    assert (stored.status, stored.message_ts, stored.sent_at, stored.file_id) == (
        "sent",
        "1700000000.000100",
        sent_at,
        "F0123ABCD",
    )
    assert (stored.lease_owner, stored.lease_until) == (None, None)
    # A sent message is never claimed again, even once its lease would have run out.
    assert [m.id for m in claim(db, "w2", now=T0 + timedelta(hours=1))] == [other.id]


def test_retry_later_releases_the_lease_until_not_before(db: Database) -> None:
    message, _ = enqueue(db, attachment=PNG, attachment_name="chart.png")
    assert message.id is not None
    claim(db, "w1")
    retry_at = T0 + timedelta(seconds=30)

    with db.session() as session:
        assert outbox.set_file(session, id=message.id, owner="w1", file_id="F1")
        assert outbox.retry_later(
            session, id=message.id, owner="w1", not_before=retry_at, error="ratelimited"
        )
        assert not outbox.retry_later(
            session, id=message.id, owner="w1", not_before=retry_at, error="again"
        )

    stored = load(db, message.key)
    assert (stored.status, stored.not_before, stored.last_error) == (
        "pending",
        retry_at,
        "ratelimited",
    )
    assert (stored.lease_owner, stored.lease_until, stored.file_id) == (None, None, "F1")
    assert claim(db, "w2", now=retry_at - timedelta(microseconds=1)) == []
    [again] = claim(db, "w2", now=retry_at)
    assert (again.attempts, again.file_id) == (2, "F1")  # the sender skips the upload


def test_mark_failed_once(db: Database) -> None:
    message, _ = enqueue(db)
    assert message.id is not None
    claim(db, "w1")
    with db.session() as session:
        assert not outbox.mark_failed(session, id=message.id, owner="w2", error="x")
        assert outbox.mark_failed(session, id=message.id, owner="w1", error="channel_not_found")
        assert not outbox.mark_failed(session, id=message.id, owner="w1", error="again")
        assert not outbox.mark_sent(session, id=message.id, owner="w1", message_ts="1.0")
        assert outbox.pending_count(session) == 0
    stored = load(db, message.key)
    assert (stored.status, stored.last_error, stored.sent_at, stored.lease_owner) == (
        "failed",
        "channel_not_found",
        None,
        None,
    )
    assert claim(db, "w2", now=T0 + timedelta(days=1)) == []


def test_concurrent_mark_sent_records_one_post(db: Database) -> None:
    message, _ = enqueue(db)
    assert message.id is not None
    message_id = message.id
    claim(db, "w1")

    def sent(i: int) -> bool:
        with db.session() as session:
            return outbox.mark_sent(session, id=message_id, owner="w1", message_ts=f"1.{i}")

    assert sorted(run_together(4, sent)) == [False, False, False, True]


def test_get_message_of_an_unknown_key(db: Database) -> None:
    with db.session() as session:
        assert outbox.get_message(session, key="nope") is None
        assert outbox.pending_count(session) == 0
