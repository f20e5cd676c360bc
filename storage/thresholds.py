"""Monthly spend thresholds, one per channel link (deleted with the link)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlmodel import Session, col, select

from storage._sql import insert
from storage.models import ChannelLink, Threshold, utcnow

__all__ = ["all_thresholds", "clear_threshold", "set_threshold", "threshold_for"]


def set_threshold(
    session: Session,
    *,
    link_id: int,
    amount_cents: int,
    updated_by: str,
    now: datetime | None = None,
) -> Threshold:
    """Set (or replace) the link's threshold; an upsert, safe against concurrent calls.

    Raises `ValueError` unless `amount_cents` is a positive integer, and
    `IntegrityError` if the link does not exist.
    """
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
        raise ValueError(f"threshold must be a positive number of cents: {amount_cents!r}")
    values = {
        "link_id": link_id,
        "amount_cents": amount_cents,
        "updated_by": updated_by,
        "updated_at": now or utcnow(),
    }
    statement = insert(session, Threshold).values(values)
    threshold_id = session.exec(
        statement.on_conflict_do_update(
            index_elements=["link_id"],
            set_={name: statement.excluded[name] for name in values if name != "link_id"},
        ).returning(col(Threshold.id))
    ).scalar_one()
    threshold = session.get(Threshold, threshold_id, populate_existing=True)
    assert threshold is not None
    return threshold


def clear_threshold(session: Session, *, link_id: int) -> bool:
    """Remove the link's threshold; False if it had none."""
    result = session.exec(delete(Threshold).where(col(Threshold.link_id) == link_id))
    return result.rowcount > 0


def threshold_for(session: Session, *, link_id: int) -> Threshold | None:
    """The link's threshold, or None."""
    return session.exec(select(Threshold).where(Threshold.link_id == link_id)).first()


def all_thresholds(session: Session) -> list[tuple[ChannelLink, Threshold]]:
    """Every enabled link that has a threshold, with it; by org, then link (the job reads each
    org once). Links of archived channels are left out."""
    rows = session.exec(
        select(ChannelLink, Threshold)
        .join(Threshold, col(Threshold.link_id) == col(ChannelLink.id))
        .where(col(ChannelLink.disabled_at).is_(None))
        .order_by(col(ChannelLink.org_id), col(ChannelLink.id))
    )
    return [(link, threshold) for link, threshold in rows]
