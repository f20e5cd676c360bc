"""Channel ↔ Atlas organization links: which orgs a Slack channel may see."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.models import ChannelLink, utcnow

__all__ = [
    "ARCHIVED",
    "add_link",
    "all_links",
    "channels_linking",
    "disable_channel",
    "enable_channel",
    "enable_link",
    "linked_org_ids",
    "links_for_channel",
    "remove_link",
]

ARCHIVED = "channel archived"

_ORG_ID = re.compile(r"[0-9a-f]{24}")


def _org_id(org_id: str) -> str:
    normalised = org_id.strip().lower()
    if not _ORG_ID.fullmatch(normalised):
        raise ValueError(f"not an Atlas organization ID (24 hex digits): {org_id!r}")
    return normalised


def _find(session: Session, team_id: str, channel_id: str, org_id: str) -> ChannelLink | None:
    return session.exec(
        select(ChannelLink).where(
            ChannelLink.team_id == team_id,
            ChannelLink.channel_id == channel_id,
            ChannelLink.org_id == org_id,
        )
    ).first()


def add_link(
    session: Session,
    *,
    team_id: str,
    channel_id: str,
    org_id: str,
    created_by: str,
    now: datetime | None = None,
) -> tuple[ChannelLink, bool]:
    """Link the channel to the org; returns the link and whether this call created it.

    Idempotent: linking twice (or two requests racing) yields the existing link
    with `created=False` instead of an error. Raises `ValueError` for an org ID that
    is not 24 hex digits.
    """
    org_id = _org_id(org_id)
    existing = _find(session, team_id, channel_id, org_id)
    if existing is not None:
        return existing, False
    link = ChannelLink(
        team_id=team_id,
        channel_id=channel_id,
        org_id=org_id,
        created_by=created_by,
        created_at=now or utcnow(),
    )
    try:
        # A savepoint, so losing the race only undoes this insert, not the caller's transaction.
        with session.begin_nested():
            session.add(link)
    except IntegrityError:
        existing = _find(session, team_id, channel_id, org_id)
        if existing is None:
            raise
        return existing, False
    return link, True


def remove_link(session: Session, *, team_id: str, channel_id: str, org_id: str) -> bool:
    """Unlink the org from the channel; False if it was not linked."""
    result = session.exec(
        delete(ChannelLink).where(
            col(ChannelLink.team_id) == team_id,
            col(ChannelLink.channel_id) == channel_id,
            col(ChannelLink.org_id) == _org_id(org_id),
        )
    )
    return result.rowcount > 0


def disable_channel(
    session: Session, *, team_id: str, channel_id: str, reason: str, now: datetime | None = None
) -> list[ChannelLink]:
    """Disable the channel's enabled links (scheduled alerts and digests skip them).

    Returns the links this call disabled: none when they already were, so the
    caller audits and announces a change once however often it is noticed.
    """
    rows = session.exec(
        update(ChannelLink)
        .where(
            col(ChannelLink.team_id) == team_id,
            col(ChannelLink.channel_id) == channel_id,
            col(ChannelLink.disabled_at).is_(None),
        )
        .values(disabled_at=now or utcnow(), disabled_reason=reason)
        .returning(col(ChannelLink.id))
    )
    ids = [row[0] for row in rows]
    return _by_ids(session, ids)


def enable_channel(
    session: Session, *, team_id: str, channel_id: str, reason: str
) -> list[ChannelLink]:
    """Enable the channel's links that were disabled for `reason`; returns those."""
    rows = session.exec(
        update(ChannelLink)
        .where(
            col(ChannelLink.team_id) == team_id,
            col(ChannelLink.channel_id) == channel_id,
            col(ChannelLink.disabled_reason) == reason,
        )
        .values(disabled_at=None, disabled_reason=None)
        .returning(col(ChannelLink.id))
    )
    return _by_ids(session, [row[0] for row in rows])


def enable_link(session: Session, *, link_id: int) -> bool:
    """Enable one disabled link; False when it was not disabled."""
    result = session.exec(
        update(ChannelLink)
        .where(col(ChannelLink.id) == link_id, col(ChannelLink.disabled_at).is_not(None))
        .values(disabled_at=None, disabled_reason=None)
    )
    return result.rowcount > 0


def _by_ids(session: Session, ids: list[int]) -> list[ChannelLink]:
    if not ids:
        return []
    found = session.exec(
        select(ChannelLink)
        .where(col(ChannelLink.id).in_(ids))
        .order_by(col(ChannelLink.org_id))
        .execution_options(populate_existing=True)
    )
    return list(found)


def links_for_channel(session: Session, *, team_id: str, channel_id: str) -> list[ChannelLink]:
    """The channel's links, oldest first."""
    return list(
        session.exec(
            select(ChannelLink)
            .where(ChannelLink.team_id == team_id, ChannelLink.channel_id == channel_id)
            .order_by(col(ChannelLink.created_at), col(ChannelLink.id))
        )
    )


def all_links(session: Session) -> list[ChannelLink]:
    """Every link, ordered by org then channel (the threshold job walks them per org)."""
    return list(
        session.exec(
            select(ChannelLink).order_by(
                col(ChannelLink.org_id),
                col(ChannelLink.team_id),
                col(ChannelLink.channel_id),
                col(ChannelLink.id),
            )
        )
    )


def linked_org_ids(session: Session) -> list[str]:
    """Each org linked to at least one channel, once, sorted."""
    return list(
        session.exec(select(ChannelLink.org_id).distinct().order_by(col(ChannelLink.org_id)))
    )


def channels_linking(session: Session, *, org_id: str) -> list[tuple[str, str]]:
    """(team, channel) of every link to the org, sorted."""
    rows = session.exec(
        select(ChannelLink.team_id, ChannelLink.channel_id)
        .where(ChannelLink.org_id == _org_id(org_id))
        .order_by(col(ChannelLink.team_id), col(ChannelLink.channel_id))
    )
    return [(team, channel) for team, channel in rows]
