"""The database tables: one SQLModel class per table, the schema Alembic migrates to.

Conventions every table follows:

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

from sqlalchemy import (
    CHAR,
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    Text,
    UniqueConstraint,
)
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
# Keys of posted things (`alert:{link}:{period}:{level}`, `digest:{link}:{YYYY-MM}`, ...).
KEY_LENGTH = 160
LEASE_OWNER_LENGTH = 128
MESSAGE_TS_LENGTH = 32  # Slack message timestamps: "1700000000.000100"
MONTH_LENGTH = 7  # a billing period or month, "YYYY-MM"


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

    __tablename__ = "channel_link"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "org_id"),)

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    team_id: str = Field(max_length=SLACK_ID_LENGTH)
    channel_id: str = Field(max_length=SLACK_ID_LENGTH)
    org_id: str = Field(max_length=ORG_ID_LENGTH, index=True)
    created_by: str = Field(max_length=SLACK_ID_LENGTH)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    # Set when the channel was archived: scheduled alerts and digests skip the link until the
    # channel is unarchived or the org is linked again (the link and its settings are kept).
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    disabled_reason: str | None = Field(default=None, max_length=64)


# --- Cost Explorer queries -------------------------------------------------------------------


class QueryStatus(StrEnum):
    """Life cycle of a Cost Explorer query: `pending` until it ends in one of the others."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


class QueryPurpose(StrEnum):
    """Why a Cost Explorer query was started: a `costs` command, or a scheduled digest."""

    CHAT = "chat"
    DIGEST = "digest"


class CostQuery(SQLModel, table=True):
    """A Cost Explorer query started from Slack, polled by the *poll* job until Atlas has it.

    `lease_owner`/`lease_until` record which worker has claimed the row for a poll
    (see `storage.costs.claim_due`); a lease that has run out may be taken
    over by another worker.

    A `digest` query belongs to a link (`link_id`, deleted with it) and reports on
    `digest_month`; its `digest_key` (`digest:{link}:{YYYY-MM}`) is unique, so two
    replicas can never start the same digest twice. `chat` queries leave all three
    NULL.
    """

    __tablename__ = "cost_query"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'done', 'failed', 'expired')",
            name="status",
        ),
        CheckConstraint("purpose IN ('chat', 'digest')", name="purpose"),
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
    message_ts: str | None = Field(default=None, max_length=MESSAGE_TS_LENGTH)
    status: str = Field(default=QueryStatus.PENDING.value, max_length=16)
    attempts: int = Field(default=0)
    next_poll_at: datetime = Field(sa_type=UTCDateTime())
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    error: str | None = Field(default=None, sa_type=Text)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime())
    lease_owner: str | None = Field(default=None, max_length=LEASE_OWNER_LENGTH)
    # Added in 0002; the server default gives rows from before it `chat`.
    purpose: str = Field(
        default=QueryPurpose.CHAT.value,
        max_length=16,
        sa_column_kwargs={"server_default": QueryPurpose.CHAT.value},
    )
    link_id: int | None = Field(
        default=None, foreign_key="channel_link.id", ondelete="CASCADE", index=True
    )
    digest_month: str | None = Field(default=None, sa_type=CHAR(MONTH_LENGTH))
    digest_key: str | None = Field(default=None, max_length=KEY_LENGTH, unique=True)

    def request_body(self) -> dict[str, Any]:
        """The Cost Explorer request body this query was started with."""
        body: dict[str, Any] = json.loads(self.params)
        return body


# --- audit log -------------------------------------------------------------------------------


class AuditEntry(SQLModel, table=True):
    """Who changed what from Slack (`link`, `unlink`, ...), with the details as JSON."""

    __tablename__ = "audit_entry"
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
        details: dict[str, Any] = json.loads(self.detail)
        return details


# --- channel settings ------------------------------------------------------------------------


class OncallKind(StrEnum):
    """Who an alert mentions: one Slack user (`<@U…>`) or a user group (`<!subteam^S…>`)."""

    USER = "user"
    USERGROUP = "usergroup"


ONCALL_ID_LENGTH = 32


class ChannelConfig(SQLModel, table=True):
    """Per-channel settings: for now, the on-call target alerts mention (NULL: nobody)."""

    __tablename__ = "channel_config"
    __table_args__ = (
        UniqueConstraint("team_id", "channel_id"),
        CheckConstraint("oncall_kind IN ('user', 'usergroup')", name="oncall_kind"),
        # A kind needs a target and a target needs a kind.
        CheckConstraint("(oncall_kind IS NULL) = (oncall_id IS NULL)", name="oncall_target"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    team_id: str = Field(max_length=SLACK_ID_LENGTH)
    channel_id: str = Field(max_length=SLACK_ID_LENGTH)
    oncall_kind: str | None = Field(default=None, max_length=16)
    oncall_id: str | None = Field(default=None, max_length=ONCALL_ID_LENGTH)
    updated_by: str = Field(max_length=SLACK_ID_LENGTH)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


# --- thresholds and alerts -------------------------------------------------------------------


class Threshold(SQLModel, table=True):
    """A link's monthly spend threshold in cents; alerts fire at 50, 80 and 100 % of it."""

    __tablename__ = "threshold"
    __table_args__ = (CheckConstraint("amount_cents > 0", name="amount_cents_positive"),)

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    link_id: int = Field(foreign_key="channel_link.id", ondelete="CASCADE", unique=True)
    amount_cents: int = Field(sa_type=BigInteger)
    updated_by: str = Field(max_length=SLACK_ID_LENGTH)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


class AlertLevel(StrEnum):
    """The threshold levels: percentages of the threshold reached, or the forecast crossing it."""

    HALF = "50"
    EIGHTY = "80"
    FULL = "100"
    FORECAST = "forecast"


class Alert(SQLModel, table=True):
    """One threshold level crossed by a link in one billing period (`YYYY-MM`).

    Unique per (link, period, level): of the replicas that notice the same crossing,
    only the one whose insert wins announces it (through the outbox message
    `outbox_key`). Acknowledge and snooze clicks are stored on the row.
    """

    __tablename__ = "alert"
    __table_args__ = (
        UniqueConstraint("link_id", "period", "level"),
        CheckConstraint("level IN ('50', '80', '100', 'forecast')", name="level"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    link_id: int = Field(foreign_key="channel_link.id", ondelete="CASCADE")
    team_id: str = Field(max_length=SLACK_ID_LENGTH)
    channel_id: str = Field(max_length=SLACK_ID_LENGTH)
    period: str = Field(sa_type=CHAR(MONTH_LENGTH))
    level: str = Field(max_length=16)
    amount_cents: int = Field(sa_type=BigInteger)
    threshold_cents: int = Field(sa_type=BigInteger)
    forecast_cents: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    acknowledged_by: str | None = Field(default=None, max_length=SLACK_ID_LENGTH)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    snoozed_by: str | None = Field(default=None, max_length=SLACK_ID_LENGTH)
    snoozed_until: datetime | None = Field(default=None, sa_type=UTCDateTime())
    outbox_key: str | None = Field(default=None, max_length=KEY_LENGTH)


# --- digests ---------------------------------------------------------------------------------

DIGEST_DAYS = (*(str(day) for day in range(1, 32)), "last")


class DigestSchedule(SQLModel, table=True):
    """When a link's monthly digest is posted: day of month (`1`-`31` or `last`), time, zone.

    `next_run_at` is the source of truth for the *digests* job: a replica takes a
    due run by moving it forward with `storage.digests.advance`.
    """

    __tablename__ = "digest_schedule"
    __table_args__ = (
        CheckConstraint(
            "day IN (" + ", ".join(f"'{day}'" for day in DIGEST_DAYS) + ")",
            name="day",
        ),
        CheckConstraint("hour BETWEEN 0 AND 23", name="hour"),
        CheckConstraint("minute BETWEEN 0 AND 59", name="minute"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    link_id: int = Field(foreign_key="channel_link.id", ondelete="CASCADE", unique=True)
    day: str = Field(max_length=4)
    hour: int
    minute: int
    timezone: str = Field(default="UTC", max_length=64)
    next_run_at: datetime = Field(sa_type=UTCDateTime(), index=True)
    updated_by: str = Field(max_length=SLACK_ID_LENGTH)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


# --- outbox ----------------------------------------------------------------------------------


class OutboxStatus(StrEnum):
    """Life cycle of an outbox message: `pending` until posted (`sent`) or given up (`failed`)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class OutboxMessage(SQLModel, table=True):
    """A Slack message to post, stored first so that it is posted once, even across restarts.

    `key` names what the message announces (`alert:{link}:{period}:{level}`,
    `digest:{link}:{YYYY-MM}`); enqueueing the same key again is a no-op.
    `payload` is the JSON of `chat.postMessage`'s `text`, `blocks` and `metadata`;
    `attachment` an optional file (a PNG chart) uploaded first, its Slack ID kept in
    `file_id` so a retry does not upload it again. Claimed with a lease like
    `CostQuery`; `attempts` counts claims; `unconfirmed_at` warns the sender that an
    earlier attempt may already have posted.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        # The sender's query: pending rows by due time.
        Index(None, "status", "not_before"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    key: str = Field(max_length=KEY_LENGTH, unique=True)
    team_id: str = Field(max_length=SLACK_ID_LENGTH)
    channel_id: str = Field(max_length=SLACK_ID_LENGTH)
    payload: str = Field(sa_type=Text)
    attachment: bytes | None = Field(default=None, sa_type=LargeBinary)
    attachment_name: str | None = Field(default=None, max_length=255)
    file_id: str | None = Field(default=None, max_length=SLACK_ID_LENGTH)
    status: str = Field(default=OutboxStatus.PENDING.value, max_length=16)
    attempts: int = Field(default=0)
    not_before: datetime = Field(sa_type=UTCDateTime())
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime())
    lease_owner: str | None = Field(default=None, max_length=LEASE_OWNER_LENGTH)
    message_ts: str | None = Field(default=None, max_length=MESSAGE_TS_LENGTH)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    last_error: str | None = Field(default=None, sa_type=Text)
    # Set when a post went out and Slack's answer neither confirmed nor refused it (the sender
    # stopped mid-post, the answer was lost, or Slack answered 5xx): the message may be in the
    # channel, so the next attempt looks for it before posting again.
    unconfirmed_at: datetime | None = Field(default=None, sa_type=UTCDateTime())

    def message(self) -> dict[str, Any]:
        """The payload, decoded: `text`, `blocks`, `metadata` as given to `enqueue`."""
        message: dict[str, Any] = json.loads(self.payload)
        return message


# --- per-org Atlas credentials ---------------------------------------------------------------


class CredentialKind(StrEnum):
    """What an org's stored credentials are: an Atlas service account or a programmatic API key."""

    SERVICE_ACCOUNT = "service_account"
    API_KEY = "api_key"


PUBLIC_ID_LENGTH = 64  # `mdb_sa_id_` + 24 hex digits, or an 8-letter public key
KEY_ID_LENGTH = 16  # a fingerprint of the encryption key (bot.core.secrets uses 8 hex digits)


class OrgCredential(SQLModel, table=True):
    """An org's own Atlas credentials (`connect ORG_ID`), used instead of the configured ones.

    `public_id` (service account client ID, or API public key) is not secret and is
    stored in clear; the secret half is only ever stored as `ciphertext`, a Fernet
    token made by `bot.core.secrets`. `key_id` fingerprints the key that made it, so a
    key rotation can tell which rows it has done and resume after a crash.
    `version` goes up each time the credentials are replaced (not on rotation,
    which keeps the secret), so a cached Atlas client knows when it is stale.
    """

    __tablename__ = "org_credential"
    __table_args__ = (
        CheckConstraint("kind IN ('service_account', 'api_key')", name="kind"),
        CheckConstraint("version > 0", name="version_positive"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_column_args=[Identity()])
    org_id: str = Field(max_length=ORG_ID_LENGTH, unique=True)
    kind: str = Field(max_length=16)
    public_id: str = Field(max_length=PUBLIC_ID_LENGTH)
    ciphertext: bytes = Field(sa_type=LargeBinary)
    key_id: str = Field(max_length=KEY_ID_LENGTH)
    version: int = Field(default=1)
    updated_by: str = Field(max_length=SLACK_ID_LENGTH)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
