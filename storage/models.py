"""The database tables: one SQLModel class per table, the schema Alembic migrates to.

Conventions every table follows (and later tables - thresholds, schedules,
alerts, outbox - should too):

- `id` is an integer identity primary key.
- Timestamps are `UTCDateTime`: timezone-aware UTC in and out on every engine.
- JSON payloads are stored as text (`json.dumps(..., sort_keys=True)`), so the
  schema is identical on SQLite and PostgreSQL.
- Constraint and index names come from the naming convention below, so that
  migrations (including SQLite batch migrations) can refer to them by name.
- The schema only changes through a migration in `storage/migrations/versions`
  (`python -m storage.revision "message"`); never `create_all`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, Identity, Index, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Slack IDs (team, channel, user) are short today (`T024BE7LD`); leave headroom.
SLACK_ID_LENGTH = 64
ORG_ID_LENGTH = 24  # Atlas organization IDs are 24 hex digits
TOKEN_LENGTH = 64


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of datetime stored here)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as a timezone-aware UTC datetime.

    PostgreSQL keeps the offset (`timestamptz`); SQLite has no timestamp type, so
    values are stored there as naive UTC text - always normalised to UTC first,
    which keeps string comparisons in SQL (`lease_until < :now`) chronological.
    Naive datetimes are refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value!r}: storage only accepts timezone-aware values"
            )
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def to_json(value: Any) -> str:
    """Serialise a payload for a JSON text column (stable key order, so equal payloads compare equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- channel links ---------------------------------------------------------------------------


class ChannelLink(SQLModel, table=True):
    """A Slack channel linked to an Atlas organization; a channel may link several orgs."""

    __tablename__ = "channel_link"  # type: ignore[assignment]
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "org_id"),)

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    team_id: str = Field(max_length=SLACK_ID_LENGTH)
    channel_id: str = Field(max_length=SLACK_ID_LENGTH)
    org_id: str = Field(max_length=ORG_ID_LENGTH, index=True)
    created_by: str = Field(max_length=SLACK_ID_LENGTH)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


# --- Cost Explorer queries -------------------------------------------------------------------


class QueryStatus(StrEnum):
    """Life cycle of a Cost Explorer query: `pending` until it ends in one of the others."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


class CostQuery(SQLModel, table=True):
    """A Cost Explorer query started from Slack, polled by the *poll* job until Atlas has it.

    `lease_owner`/`lease_until` record which worker has claimed the row for a poll
    (see `storage.cost_queries.claim_due`); a lease that has run out may be taken
    over by another worker.
    """

    __tablename__ = "cost_query"  # type: ignore[assignment]
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'done', 'failed', 'expired')",
            name="status",
        ),
        # The poll job's query: pending rows by due time.
        Index(None, "status", "next_poll_at"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    token: str = Field(max_length=TOKEN_LENGTH, unique=True)
    org_id: str = Field(max_length=ORG_ID_LENGTH)
    team_id: str = Field(max_length=SLACK_ID_LENGTH)
    channel_id: str = Field(max_length=SLACK_ID_LENGTH)
    requested_by: str = Field(max_length=SLACK_ID_LENGTH)
    params: str = Field(sa_type=Text)
    message_ts: str | None = Field(default=None, max_length=32)
    status: str = Field(default=QueryStatus.PENDING.value, max_length=16)
    attempts: int = Field(default=0)
    next_poll_at: datetime = Field(sa_type=UTCDateTime())
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    error: str | None = Field(default=None, sa_type=Text)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime())
    lease_owner: str | None = Field(default=None, max_length=128)

    def request_body(self) -> dict[str, Any]:
        """The Cost Explorer request body this query was started with."""
        return json.loads(self.params)


# --- audit log -------------------------------------------------------------------------------


class AuditEntry(SQLModel, table=True):
    """Who changed what from Slack (`link`, `unlink`, ...), with the details as JSON."""

    __tablename__ = "audit_entry"  # type: ignore[assignment]
    __table_args__ = (Index(None, "team_id", "channel_id", "at"),)

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), index=True)
    team_id: str = Field(max_length=SLACK_ID_LENGTH)
    channel_id: str | None = Field(default=None, max_length=SLACK_ID_LENGTH)
    user_id: str = Field(max_length=SLACK_ID_LENGTH)
    action: str = Field(max_length=32)
    detail: str = Field(default="{}", sa_type=Text)

    def details(self) -> dict[str, Any]:
        """The entry's details, decoded."""
        return json.loads(self.detail)
