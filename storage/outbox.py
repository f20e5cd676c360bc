"""The outbox: Slack messages stored before they are posted, so each is posted once.

Producers `enqueue` a message under a key naming what it announces
(`alert:{link}:{period}:{level}`, `digest:{link}:{YYYY-MM}`); enqueueing a key
twice, even from two replicas at once, keeps the first message. The *outbox*
job on every replica then does, each step in its own transaction:

1. `claim_due(now=..., owner=me, lease_seconds=..., limit=...)` leases due
   messages to this worker and counts the attempt.
2. `mark_sending(...)` just before the post sets `unconfirmed_at`; only an answer
   that settles it clears it (`mark_sent`, or `retry_later(..., unconfirmed=False)`
   after a refusal or a 429). A message claimed again while it is set (its sender
   crashed, its answer was lost, Slack answered 5xx) may already be in the channel
   (`may_have_posted`): the sender looks for it before posting again.
3. `mark_sent(...)`; or `retry_later(...)` (transient error: releases the lease
   until `not_before`); or `mark_failed(...)` (give up). Each returns False, and
   changes nothing, if this worker no longer holds the lease. `set_file(...)`,
   between the post and `mark_sent`, records the file ID of the chart shared with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, update
from sqlmodel import Session, col, select

from storage import _sql
from storage._sql import insert
from storage.models import KEY_LENGTH, OutboxMessage, OutboxStatus, to_json, utcnow

__all__ = [
    "TRANSPORT",
    "claim_due",
    "enqueue",
    "get_message",
    "mark_failed",
    "mark_sending",
    "mark_sent",
    "may_have_posted",
    "pending_count",
    "retry_later",
    "set_file",
]


def enqueue(
    session: Session,
    *,
    key: str,
    team_id: str,
    channel_id: str,
    payload: Mapping[str, Any],
    attachment: bytes | None = None,
    attachment_name: str | None = None,
    not_before: datetime | None = None,
    now: datetime | None = None,
) -> tuple[OutboxMessage, bool]:
    """Store a message to post; returns it and whether this call stored it.

    `payload` holds `chat.postMessage`'s `text`, `blocks` and `metadata` (stored as
    JSON); `attachment` an optional file (a PNG) to upload with it. The message is
    due at `not_before` (default: `now`). Idempotent by `key`: if a message with
    that key exists (or another transaction stores one at the same moment), that
    message is returned with False and this one is dropped.
    """
    if not 0 < len(key) <= KEY_LENGTH:
        raise ValueError(f"outbox key must be 1-{KEY_LENGTH} characters: {key!r}")
    if attachment is not None and not attachment_name:
        raise ValueError("an attachment needs an attachment_name")
    now = now or utcnow()
    statement = (
        insert(session, OutboxMessage)
        .values(
            key=key,
            team_id=team_id,
            channel_id=channel_id,
            payload=to_json(dict(payload)),
            attachment=attachment,
            attachment_name=attachment_name,
            status=OutboxStatus.PENDING.value,
            attempts=0,
            not_before=not_before or now,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(col(OutboxMessage.id))
    )
    message_id = session.exec(statement).scalar_one_or_none()
    if message_id is not None:
        message = session.get(OutboxMessage, message_id)
        created = True
    else:
        # Lost to an existing row: on PostgreSQL the insert waited for the other
        # transaction to commit it, so this read (a new snapshot) sees it.
        message = get_message(session, key=key)
        created = False
    assert message is not None
    return message, created


def get_message(session: Session, *, key: str) -> OutboxMessage | None:
    """The message stored under `key`, or None."""
    return session.exec(select(OutboxMessage).where(OutboxMessage.key == key)).first()


def claim_due(
    session: Session, *, now: datetime, owner: str, lease_seconds: float, limit: int
) -> list[OutboxMessage]:
    """Lease up to `limit` pending messages due at `now` to `owner`, oldest first.

    Each claimed row's `attempts` goes up by one, so `attempts > 1` tells the
    sender an earlier attempt may already have posted. Concurrent callers never
    get the same row while its lease lasts (see `storage._sql.claim`).
    """
    return _sql.claim(
        session,
        OutboxMessage,
        due=col(OutboxMessage.not_before) <= now,
        order=(col(OutboxMessage.not_before), col(OutboxMessage.id)),
        now=now,
        owner=owner,
        lease_seconds=lease_seconds,
        limit=limit,
        count_attempt=True,
    )


# The prefix of the error of a post whose answer never came.
TRANSPORT = "transport:"


def may_have_posted(row: OutboxMessage) -> bool:
    """Whether an earlier attempt may have posted this message though it is still pending."""
    return row.unconfirmed_at is not None


def _held(id: int, owner: str) -> ColumnElement[bool]:
    return and_(
        col(OutboxMessage.id) == id,
        col(OutboxMessage.status) == OutboxStatus.PENDING.value,
        col(OutboxMessage.lease_owner) == owner,
    )


def _update_held(session: Session, id: int, owner: str, **values: Any) -> bool:
    result = session.exec(
        update(OutboxMessage)
        .where(_held(id, owner))
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1


def set_file(session: Session, *, id: int, owner: str, file_id: str) -> bool:
    """Remember the uploaded attachment's Slack file ID; False unless `owner` holds the lease."""
    return _update_held(session, id, owner, file_id=file_id)


def mark_sending(session: Session, *, id: int, owner: str, now: datetime | None = None) -> bool:
    """The post is about to go out: until Slack's answer settles it, it may be in the channel."""
    return _update_held(session, id, owner, unconfirmed_at=now or utcnow())


def mark_sent(
    session: Session, *, id: int, owner: str, message_ts: str, now: datetime | None = None
) -> bool:
    """Record the posted message's `ts`; True only while pending and leased by `owner`."""
    return _update_held(
        session,
        id,
        owner,
        status=OutboxStatus.SENT.value,
        message_ts=message_ts,
        sent_at=now or utcnow(),
        unconfirmed_at=None,
        lease_owner=None,
        lease_until=None,
    )


def retry_later(
    session: Session,
    *,
    id: int,
    owner: str,
    not_before: datetime,
    error: str,
    unconfirmed: bool = False,
) -> bool:
    """Not posted this time, as far as anyone knows: release the lease until `not_before`,
    keeping `error`. `unconfirmed`: the post may have gone out all the same (no answer, 5xx)."""
    values: dict[str, Any] = {} if unconfirmed else {"unconfirmed_at": None}
    return _update_held(
        session,
        id,
        owner,
        not_before=not_before,
        last_error=error,
        lease_owner=None,
        lease_until=None,
        **values,
    )


def mark_failed(
    session: Session, *, id: int, owner: str, error: str, now: datetime | None = None
) -> bool:
    """Give up on the message (it stays stored with `error`); True only for the lease holder.

    `now` is accepted for symmetry with `mark_sent`; a failed message keeps
    `sent_at` NULL.
    """
    return _update_held(
        session,
        id,
        owner,
        status=OutboxStatus.FAILED.value,
        last_error=error,
        lease_owner=None,
        lease_until=None,
    )


def pending_count(session: Session) -> int:
    """How many messages are still waiting to be posted."""
    return session.exec(
        select(func.count())
        .select_from(OutboxMessage)
        .where(col(OutboxMessage.status) == OutboxStatus.PENDING.value)
    ).one()
