"""Dialect-specific SQL shared by the data-access modules: `INSERT … ON CONFLICT`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session


def insert(session: Session, model: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for `model`'s table that supports `on_conflict_do_nothing/_do_update`.

    PostgreSQL and SQLite (3.24+) spell `ON CONFLICT` the same way and both support
    `RETURNING` (SQLite 3.35+), so callers write one statement for both engines.
    """
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
