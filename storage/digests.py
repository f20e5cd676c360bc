"""Monthly digest schedules, one per channel link, and the atomic claim of a due run.

The *digests* job on every replica does, each step in its own transaction:

1. `due_schedules(now=..., limit=...)`: the schedules whose `next_run_at` has passed.
2. For each, compute the run after `next_run_at` (the caller's cron logic) and call
   `advance(schedule_id=..., seen=<next_run_at as read>, next_run_at=<new>)`.
   Only the replica whose update changed the row gets True, and only it starts
   the digest; the others saw a value that is no longer there.

`seen` must be the `next_run_at` read back from the database (not recomputed):
the claim compares the stored value for equality. Stored timestamps round-trip
exactly on both engines (microseconds, UTC), so a value read back compares equal.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from storage._sql import insert
from storage.models import DIGEST_DAYS, ChannelLink, DigestSchedule, utcnow

__all__ = [
    "advance",
    "clear_schedule",
    "due_schedules",
    "schedule_for",
    "schedules_for_channel",
    "set_schedule",
]

TIMEZONE_LENGTH = 64


def set_schedule(
    session: Session,
    *,
    link_id: int,
    day: str,
    hour: int,
    minute: int,
    next_run_at: datetime,
    updated_by: str,
    timezone: str = "UTC",
    now: datetime | None = None,
) -> DigestSchedule:
    """Set (or replace) when the link's digest is posted; an upsert, safe against races.

    `day` is `"1"`-`"31"` or `"last"`, `hour` 0-23 and `minute` 0-59 in `timezone`
    (an IANA name, not checked here); `next_run_at` is the first run, computed by
    the caller. Raises `ValueError` for values out of range, `IntegrityError` if the
    link does not exist.
    """
    day = str(day).strip().lower()
    if day not in DIGEST_DAYS:
        raise ValueError(f"digest day must be 1-31 or 'last': {day!r}")
    if not 0 <= hour <= 23:
        raise ValueError(f"digest hour must be 0-23: {hour!r}")
    if not 0 <= minute <= 59:
        raise ValueError(f"digest minute must be 0-59: {minute!r}")
    if not timezone or len(timezone) > TIMEZONE_LENGTH:
        raise ValueError(f"time zone must be 1-{TIMEZONE_LENGTH} characters: {timezone!r}")
    values = {
        "link_id": link_id,
        "day": day,
        "hour": hour,
        "minute": minute,
        "timezone": timezone,
        "next_run_at": next_run_at,
        "updated_by": updated_by,
        "updated_at": now or utcnow(),
    }
    statement = insert(session, DigestSchedule).values(values)
    schedule_id = session.exec(
        statement.on_conflict_do_update(
            index_elements=["link_id"],
            set_={name: statement.excluded[name] for name in values if name != "link_id"},
        ).returning(col(DigestSchedule.id))
    ).scalar_one()
    schedule = session.get(DigestSchedule, schedule_id, populate_existing=True)
    assert schedule is not None
    return schedule


def clear_schedule(session: Session, *, link_id: int) -> bool:
    """Stop the link's digest; False if it had none."""
    result = session.exec(delete(DigestSchedule).where(col(DigestSchedule.link_id) == link_id))
    return result.rowcount > 0


def schedule_for(session: Session, *, link_id: int) -> DigestSchedule | None:
    """The link's digest schedule, or None."""
    return session.exec(select(DigestSchedule).where(DigestSchedule.link_id == link_id)).first()


def schedules_for_channel(
    session: Session, *, team_id: str, channel_id: str
) -> list[tuple[ChannelLink, DigestSchedule]]:
    """The channel's links that have a digest, with their schedules, in the order linked."""
    rows = session.exec(
        select(ChannelLink, DigestSchedule)
        .join(DigestSchedule, col(DigestSchedule.link_id) == col(ChannelLink.id))
        .where(ChannelLink.team_id == team_id, ChannelLink.channel_id == channel_id)
        .order_by(col(ChannelLink.created_at), col(ChannelLink.id))
    )
    return [(link, schedule) for link, schedule in rows]


def due_schedules(
    session: Session, *, now: datetime, limit: int
) -> list[tuple[ChannelLink, DigestSchedule]]:
    """Up to `limit` schedules whose `next_run_at` is at or before `now`, oldest first.

    Links of archived channels are left out; their schedules stay due, so the one
    digest missed is posted once the channel is back (the key stops a second one).

    Reading is not claiming: several replicas may get the same rows; `advance`
    decides which one runs each.
    """
    rows = session.exec(
        select(ChannelLink, DigestSchedule)
        .join(DigestSchedule, col(DigestSchedule.link_id) == col(ChannelLink.id))
        .where(col(DigestSchedule.next_run_at) <= now, col(ChannelLink.disabled_at).is_(None))
        .order_by(col(DigestSchedule.next_run_at), col(DigestSchedule.id))
        .limit(limit)
    )
    return [(link, schedule) for link, schedule in rows]


def advance(session: Session, *, schedule_id: int, seen: datetime, next_run_at: datetime) -> bool:
    """Claim the run at `seen` by moving the schedule on to `next_run_at`.

    True only for the one caller whose conditional UPDATE (`WHERE next_run_at =
    :seen`) changed the row; False when another caller advanced it first, the
    schedule was changed or cleared meanwhile. On PostgreSQL a concurrent caller
    waits for the winner's commit and then finds the row changed; on SQLite the
    write lock serialises them.
    """
    result = session.exec(
        update(DigestSchedule)
        .where(col(DigestSchedule.id) == schedule_id, col(DigestSchedule.next_run_at) == seen)
        .values(next_run_at=next_run_at)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1
