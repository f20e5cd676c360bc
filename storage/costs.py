"""Cost Explorer queries started from Slack: stored, claimed by a poller, finished once.

The poll job's cycle, each step in its own transaction (`Database.run`):

1. `claim_due(now=..., owner=me, lease_seconds=..., limit=...)` leases due rows
   to this worker; no other worker gets the same row while the lease lasts.
2. Poll Atlas for each claimed token.
3. Not ready: `reschedule(id=..., owner=me, next_poll_at=...)` releases the row
   until its next poll. Ready or failed for good: `finish(...)`, and post the
   result only if it returned True, so a result is recorded and posted once even
   if a lease ran out and another worker polled the same token meanwhile.

Queries are `chat` (a `costs` command) or `digest` (a scheduled monthly digest,
tied to a link and a month by a unique `digest_key`, so a digest is started once).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage import _sql
from storage.errors import AlreadyExists
from storage.models import (
    KEY_LENGTH,
    TOKEN_LENGTH,
    CostQuery,
    QueryPurpose,
    QueryStatus,
    to_json,
    utcnow,
)

__all__ = [
    "add_query",
    "claim_due",
    "digest_query",
    "finish",
    "get_query",
    "open_chat_queries",
    "pending_count",
    "reschedule",
    "set_message",
]

_FINAL = frozenset({QueryStatus.DONE, QueryStatus.FAILED, QueryStatus.EXPIRED})
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def add_query(
    session: Session,
    *,
    token: str,
    org_id: str,
    team_id: str,
    channel_id: str,
    requested_by: str,
    params: Mapping[str, Any],
    next_poll_at: datetime,
    message_ts: str | None = None,
    now: datetime | None = None,
    purpose: QueryPurpose | str = QueryPurpose.CHAT,
    link_id: int | None = None,
    digest_month: str | None = None,
    digest_key: str | None = None,
) -> CostQuery:
    """Store a query Atlas has accepted; `params` is the request body that started it.

    A digest query passes `purpose="digest"`, its `link_id` (the query is deleted
    with the link), the `digest_month` (`YYYY-MM`) it reports on and a unique
    `digest_key` (`digest:{link}:{YYYY-MM}`). Raises `AlreadyExists` when a query
    with that `digest_key` is already stored (by this or another replica); only
    the insert is undone, the caller's transaction stays usable. Raises
    `ValueError` for a bad token, purpose, month or key.
    """
    if not token or len(token) > TOKEN_LENGTH:
        raise ValueError(f"Cost Explorer token must be 1-{TOKEN_LENGTH} characters: {token!r}")
    purpose = QueryPurpose(purpose)
    if digest_month is not None and not _MONTH.fullmatch(digest_month):
        raise ValueError(f"digest_month must be YYYY-MM: {digest_month!r}")
    if digest_key is not None and not 0 < len(digest_key) <= KEY_LENGTH:
        raise ValueError(f"digest_key must be 1-{KEY_LENGTH} characters: {digest_key!r}")
    query = CostQuery(
        token=token,
        org_id=org_id,
        team_id=team_id,
        channel_id=channel_id,
        requested_by=requested_by,
        params=to_json(dict(params)),
        message_ts=message_ts,
        next_poll_at=next_poll_at,
        created_at=now or utcnow(),
        purpose=purpose.value,
        link_id=link_id,
        digest_month=digest_month,
        digest_key=digest_key,
    )
    try:
        # A savepoint, so a duplicate only undoes this insert, not the caller's transaction.
        with session.begin_nested():
            session.add(query)
    except IntegrityError:
        # Which unique key clashed is only known by looking: the token's clash stays an
        # IntegrityError (a programming error), the digest key's is expected.
        if digest_key is not None and digest_query(session, digest_key=digest_key) is not None:
            raise AlreadyExists(
                f"a Cost Explorer query for {digest_key!r} already exists", key=digest_key
            ) from None
        raise
    return query


def digest_query(session: Session, *, digest_key: str) -> CostQuery | None:
    """The query started for this digest (`digest:{link}:{YYYY-MM}`), or None."""
    return session.exec(select(CostQuery).where(CostQuery.digest_key == digest_key)).first()


def get_query(session: Session, *, id: int) -> CostQuery | None:
    """The query with this id, or None."""
    return session.get(CostQuery, id)


def set_message(session: Session, *, id: int, message_ts: str) -> bool:
    """Remember the Slack message to update with the result; False if the query is unknown."""
    result = session.exec(
        update(CostQuery).where(col(CostQuery.id) == id).values(message_ts=message_ts)
    )
    return result.rowcount == 1


def claim_due(
    session: Session, *, now: datetime, owner: str, lease_seconds: float, limit: int
) -> list[CostQuery]:
    """Lease up to `limit` pending queries whose poll time has come to `owner`.

    Rows already leased (and not yet expired) are skipped, so concurrent callers
    never receive the same row; see `storage._sql.claim` for how.
    """
    return _sql.claim(
        session,
        CostQuery,
        due=col(CostQuery.next_poll_at) <= now,
        order=(col(CostQuery.next_poll_at), col(CostQuery.id)),
        now=now,
        owner=owner,
        lease_seconds=lease_seconds,
        limit=limit,
    )


def reschedule(session: Session, *, id: int, owner: str, next_poll_at: datetime) -> bool:
    """Not ready yet: release the lease, count the attempt and set the next poll time.

    False (and nothing changes) if the query is no longer pending or `owner` no
    longer holds its lease.
    """
    result = session.exec(
        update(CostQuery)
        .where(
            col(CostQuery.id) == id,
            col(CostQuery.status) == QueryStatus.PENDING.value,
            col(CostQuery.lease_owner) == owner,
        )
        .values(
            next_poll_at=next_poll_at,
            attempts=col(CostQuery.attempts) + 1,
            lease_owner=None,
            lease_until=None,
        )
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1


def finish(
    session: Session,
    *,
    id: int,
    owner: str,
    status: QueryStatus | str,
    error: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Record the outcome (`done`, `failed` or `expired`); True only for the call that did.

    Succeeds only while the query is still pending and leased by `owner`, so of
    two workers that polled the same token, only one records (and should post)
    the result.
    """
    final = QueryStatus(status)
    if final not in _FINAL:
        raise ValueError(
            f"finish() needs a final status ({', '.join(sorted(_FINAL))}), not {final!r}"
        )
    result = session.exec(
        update(CostQuery)
        .where(
            col(CostQuery.id) == id,
            col(CostQuery.status) == QueryStatus.PENDING.value,
            col(CostQuery.lease_owner) == owner,
        )
        .values(
            status=final.value,
            error=error,
            finished_at=now or utcnow(),
            lease_owner=None,
            lease_until=None,
        )
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1


def pending_count(session: Session) -> int:
    """How many queries are still waiting for their result."""
    return session.exec(
        select(func.count())
        .select_from(CostQuery)
        .where(col(CostQuery.status) == QueryStatus.PENDING.value)
    ).one()


def open_chat_queries(session: Session, *, team_id: str, channel_id: str) -> list[CostQuery]:
    """The channel's `costs` queries still waiting for their result, oldest first."""
    return list(
        session.exec(
            select(CostQuery)
            .where(
                col(CostQuery.team_id) == team_id,
                col(CostQuery.channel_id) == channel_id,
                col(CostQuery.purpose) == QueryPurpose.CHAT.value,
                col(CostQuery.status) == QueryStatus.PENDING.value,
            )
            .order_by(col(CostQuery.created_at), col(CostQuery.id))
        )
    )
