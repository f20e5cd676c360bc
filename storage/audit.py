"""The audit log: who changed links, thresholds and schedules from Slack, and when."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from storage.models import AuditEntry, to_json, utcnow

__all__ = ["entries", "record"]


def record(
    session: Session,
    *,
    team_id: str,
    channel_id: str | None,
    user_id: str,
    action: str,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Append one entry (`action` such as `link`, `unlink`; `detail` stored as JSON)."""
    entry = AuditEntry(
        at=at or utcnow(),
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        action=action,
        detail=to_json(dict(detail or {})),
    )
    session.add(entry)
    session.flush()
    return entry


def entries(
    session: Session,
    *,
    limit: int = 50,
    team_id: str | None = None,
    channel_id: str | None = None,
    action: str | None = None,
) -> list[AuditEntry]:
    """The most recent entries first, optionally only one workspace, channel or action."""
    statement = select(AuditEntry)
    if team_id is not None:
        statement = statement.where(AuditEntry.team_id == team_id)
    if channel_id is not None:
        statement = statement.where(AuditEntry.channel_id == channel_id)
    if action is not None:
        statement = statement.where(AuditEntry.action == action)
    statement = statement.order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc()).limit(
        limit
    )
    return list(session.exec(statement))
