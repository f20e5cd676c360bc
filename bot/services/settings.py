"""A channel's thresholds, on-call target and digest schedules; every change is audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

from sqlmodel import Session

from bot.core.schedule import next_run
from bot.deps import Deps
from bot.services.links import choose_org
from storage import audit, channel_config, digests, links, thresholds
from storage.models import ChannelConfig, ChannelLink, DigestSchedule, Threshold


def _link(session: Session, team_id: str, channel_id: str, org_id: str | None) -> ChannelLink:
    rows = links.links_for_channel(session, team_id=team_id, channel_id=channel_id)
    chosen = choose_org(sorted(r.org_id for r in rows), org_id)
    return next(r for r in rows if r.org_id == chosen)


def _threshold(
    session: Session,
    *,
    team_id: str,
    channel_id: str,
    user_id: str,
    org_id: str | None,
    amount_cents: int | None,
) -> tuple[str, bool]:
    link = _link(session, team_id, channel_id, org_id)
    assert link.id is not None  # links read from the database have their id
    if amount_cents is None:
        changed = thresholds.clear_threshold(session, link_id=link.id)
    else:
        thresholds.set_threshold(
            session, link_id=link.id, amount_cents=amount_cents, updated_by=user_id
        )
        changed = True
    if changed:
        audit.record(
            session,
            team_id=team_id,
            channel_id=channel_id,
            user_id=user_id,
            action="threshold" if amount_cents is not None else "threshold_off",
            detail={"org_id": link.org_id, "amount_cents": amount_cents},
        )
    return link.org_id, changed


async def set_threshold(
    deps: Deps,
    *,
    team_id: str,
    channel_id: str,
    user_id: str,
    org_id: str | None,
    amount_cents: int | None,
) -> tuple[str, bool]:
    """Set (or, with ``None``, remove) the monthly threshold; returns the org and whether it changed."""
    return await deps.db.run(
        _threshold,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        org_id=org_id,
        amount_cents=amount_cents,
    )


def _oncall(
    session: Session,
    *,
    team_id: str,
    channel_id: str,
    user_id: str,
    kind: str | None,
    target: str | None,
) -> None:
    channel_config.set_oncall(
        session,
        team_id=team_id,
        channel_id=channel_id,
        kind=kind,
        target_id=target,
        updated_by=user_id,
    )
    audit.record(
        session,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        action="oncall",
        detail={"kind": kind, "id": target},
    )


async def set_oncall(
    deps: Deps, *, team_id: str, channel_id: str, user_id: str, kind: str | None, target: str | None
) -> None:
    await deps.db.run(
        _oncall, team_id=team_id, channel_id=channel_id, user_id=user_id, kind=kind, target=target
    )


def _digest(
    session: Session,
    *,
    team_id: str,
    channel_id: str,
    user_id: str,
    day: str | None,
    at: time | None,
    now: datetime,
) -> list[tuple[str, datetime | None]]:
    rows = links.links_for_channel(session, team_id=team_id, channel_id=channel_id)
    if not rows:
        choose_org([], None)  # refuses: nothing linked here
    result: list[tuple[str, datetime | None]] = []
    for link in rows:
        assert link.id is not None  # links read from the database have their id
        if day is None or at is None:
            digests.clear_schedule(session, link_id=link.id)
            result.append((link.org_id, None))
            continue
        first = next_run(day, at.hour, at.minute, after=now)
        digests.set_schedule(
            session,
            link_id=link.id,
            day=day,
            hour=at.hour,
            minute=at.minute,
            next_run_at=first,
            updated_by=user_id,
            now=now,
        )
        result.append((link.org_id, first))
    audit.record(
        session,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        action="digest_on" if day else "digest_off",
        detail={"day": day, "time": at.strftime("%H:%M") if at else None},
    )
    return result


async def set_digest(
    deps: Deps, *, team_id: str, channel_id: str, user_id: str, day: str | None, at: time | None
) -> list[tuple[str, datetime | None]]:
    """Schedule (or, with ``day=None``, stop) the monthly digest of every org linked here."""
    return await deps.db.run(
        _digest,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        day=day,
        at=at,
        now=deps.clock(),
    )


async def link_for(deps: Deps, *, team_id: str, channel_id: str, org_id: str | None) -> ChannelLink:
    return await deps.db.run(_link, team_id, channel_id, org_id)


@dataclass(frozen=True)
class ChannelState:
    links: tuple[ChannelLink, ...]
    thresholds: dict[int, Threshold]
    schedules: dict[int, DigestSchedule]
    config: ChannelConfig | None


def _state(session: Session, *, team_id: str, channel_id: str) -> ChannelState:
    rows = links.links_for_channel(session, team_id=team_id, channel_id=channel_id)
    # Links read from the database always have their id: the `is not None` tests only say so.
    found_thresholds = {
        r.id: t
        for r in rows
        if r.id is not None and (t := thresholds.threshold_for(session, link_id=r.id)) is not None
    }
    found_schedules = {
        link.id: schedule
        for link, schedule in digests.schedules_for_channel(
            session, team_id=team_id, channel_id=channel_id
        )
        if link.id is not None
    }
    config = channel_config.get_config(session, team_id=team_id, channel_id=channel_id)
    return ChannelState(tuple(rows), found_thresholds, found_schedules, config)


async def state(deps: Deps, *, team_id: str, channel_id: str) -> ChannelState:
    return await deps.db.run(_state, team_id=team_id, channel_id=channel_id)
