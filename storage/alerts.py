"""Threshold alerts: one row per (link, billing period, level), inserted once, then acknowledged or snoozed.

The *thresholds* job on every replica may notice the same crossing; `record_levels`
inserts with `ON CONFLICT DO NOTHING` and returns only the rows this call
inserted, so exactly one replica announces each level.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from storage._sql import insert
from storage.models import KEY_LENGTH, Alert, AlertLevel, ChannelLink, utcnow

__all__ = [
    "acknowledge",
    "alerts_for_link",
    "get_alert",
    "record_levels",
    "set_outbox_key",
    "snooze",
    "snoozed_until",
]

_PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
# Inserted in one fixed order, so that two transactions racing on the same levels
# wait on each other's unique keys in the same order and cannot deadlock.
_LEVEL_ORDER = list(AlertLevel)


def record_levels(
    session: Session,
    *,
    link: ChannelLink,
    period: str,
    levels: Sequence[AlertLevel | str],
    amount_cents: int,
    threshold_cents: int,
    forecast_cents: int | None,
    now: datetime | None = None,
) -> list[Alert]:
    """Record that `link` crossed `levels` (`50`, `80`, `100`, `forecast`) in `period` (`YYYY-MM`).

    Levels already recorded for (link, period) are skipped, also when another
    transaction records them at the same moment. Returns only the alerts this call
    inserted, in level order: announce those, and nothing else.
    """
    if not _PERIOD.fullmatch(period):
        raise ValueError(f"billing period must be YYYY-MM: {period!r}")
    wanted = {AlertLevel(level) for level in levels}
    if link.id is None:
        raise ValueError("record_levels needs a stored link")
    created_at = now or utcnow()
    inserted: list[int] = []
    for level in (level for level in _LEVEL_ORDER if level in wanted):
        statement = (
            insert(session, Alert)
            .values(
                link_id=link.id,
                team_id=link.team_id,
                channel_id=link.channel_id,
                period=period,
                level=level.value,
                amount_cents=amount_cents,
                threshold_cents=threshold_cents,
                forecast_cents=forecast_cents,
                created_at=created_at,
            )
            .on_conflict_do_nothing(index_elements=["link_id", "period", "level"])
            .returning(col(Alert.id))
        )
        alert_id = session.exec(statement).scalar_one_or_none()
        if alert_id is not None:
            inserted.append(alert_id)
    if not inserted:
        return []
    by_id = {
        alert.id: alert for alert in session.exec(select(Alert).where(col(Alert.id).in_(inserted)))
    }
    return [by_id[alert_id] for alert_id in inserted]


def get_alert(session: Session, *, id: int) -> Alert | None:
    """The alert with this id, or None."""
    return session.get(Alert, id)


def set_outbox_key(session: Session, *, ids: Sequence[int], key: str) -> int:
    """Note which outbox message announces these alerts; returns how many were updated."""
    if not 0 < len(key) <= KEY_LENGTH:
        raise ValueError(f"outbox key must be 1-{KEY_LENGTH} characters: {key!r}")
    if not ids:
        return 0
    result = session.exec(
        update(Alert)
        .where(col(Alert.id).in_(list(ids)))
        .values(outbox_key=key)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount


def acknowledge(
    session: Session, *, id: int, user_id: str, now: datetime | None = None
) -> Alert | None:
    """Record that `user_id` acknowledged the alert, unless someone did first.

    Returns the alert as it then stands (so `acknowledged_by` is whoever was first), or None
    when it no longer exists: one call, so no alert can vanish between a write and a re-read.
    """
    session.exec(
        update(Alert)
        .where(col(Alert.id) == id, col(Alert.acknowledged_at).is_(None))
        .values(acknowledged_by=user_id, acknowledged_at=now or utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return session.get(Alert, id, populate_existing=True)


def snooze(session: Session, *, id: int, user_id: str, until: datetime) -> bool:
    """Silence the alert's link until `until` (a later snooze replaces it); False if unknown."""
    result = session.exec(
        update(Alert)
        .where(col(Alert.id) == id)
        .values(snoozed_by=user_id, snoozed_until=until)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1


def snoozed_until(session: Session, *, link_id: int, now: datetime) -> datetime | None:
    """When the latest snooze on any of the link's alerts ends, if that is after `now`."""
    return session.exec(
        select(Alert.snoozed_until)
        .where(col(Alert.link_id) == link_id, col(Alert.snoozed_until) > now)
        .order_by(col(Alert.snoozed_until).desc())
        .limit(1)
    ).first()


def alerts_for_link(session: Session, *, link_id: int, period: str | None = None) -> list[Alert]:
    """The link's alerts, optionally of one period, oldest first."""
    statement = select(Alert).where(Alert.link_id == link_id)
    if period is not None:
        statement = statement.where(Alert.period == period)
    return list(session.exec(statement.order_by(col(Alert.created_at), col(Alert.id))))
