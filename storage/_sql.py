"""SQL shared by the data-access modules: `INSERT … ON CONFLICT` and leased claims."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select


def insert(session: Session, model: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for `model`'s table that supports `on_conflict_do_nothing/_do_update`.

    PostgreSQL and SQLite (3.24+) spell `ON CONFLICT` the same way and both support
    `RETURNING` (SQLite 3.35+), so callers write one statement for both engines.
    """
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def lease_free(model: Any, now: datetime) -> ColumnElement[bool]:
    return or_(col(model.lease_until).is_(None), col(model.lease_until) < now)


def claim(
    session: Session,
    model: Any,
    *,
    due: ColumnElement[bool],
    order: tuple[Any, ...],
    now: datetime,
    owner: str,
    lease_seconds: float,
    limit: int,
    count_attempt: bool = False,
) -> list[Any]:
    """Lease up to `limit` pending, due, unleased rows of `model` to `owner`, in `order`.

    `model` has `id`, `status` ('pending' while open), `lease_until`, `lease_owner`
    and `attempts`. Concurrent callers never get the same row while its lease lasts:
    on PostgreSQL the rows stay locked (`FOR UPDATE SKIP LOCKED`) until the caller
    commits; on SQLite each row is taken with a conditional UPDATE whose row count
    says whether this caller won it. With `count_attempt`, `attempts` goes up by one.
    """
    lease_until = now + timedelta(seconds=lease_seconds)
    open_and_free = and_(col(model.status) == "pending", lease_free(model, now))
    if session.get_bind().dialect.name == "postgresql":
        rows = list(
            session.exec(
                select(model)
                .where(due, open_and_free)
                .order_by(*order)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for row in rows:
            row.lease_owner = owner
            row.lease_until = lease_until
            if count_attempt:
                row.attempts += 1
        session.flush()
        return rows

    values: dict[str, Any] = {"lease_owner": owner, "lease_until": lease_until}
    if count_attempt:
        values["attempts"] = col(model.attempts) + 1
    candidates = list(
        session.exec(select(model.id).where(due, open_and_free).order_by(*order).limit(limit))
    )
    won = [
        row_id
        for row_id in candidates
        if session.exec(
            update(model)
            .where(col(model.id) == row_id, open_and_free)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    ]
    if not won:
        return []
    return list(
        session.exec(
            select(model)
            .where(col(model.id).in_(won))
            .order_by(*order)
            .execution_options(populate_existing=True)
        )
    )
