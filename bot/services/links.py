"""Channel ↔ org links: who may change them, which org a command means, and what a channel sees.

Also what happens to links when their channel is archived: Slack says so with a
``channel_archive``/``group_archive`` event, or by refusing a post with
``is_archived`` (the event may have been missed, or the app was not subscribed).
Either way the channel's links are disabled, not deleted: scheduled alerts and
digests stop, each disabled link gets an audit entry, and unarchiving (or linking
the org again) turns them back on with their thresholds and schedules.
"""

from __future__ import annotations

import logging
from typing import Literal

from sqlmodel import Session

from bot.deps import Deps
from bot.render.explain import Refusal
from storage import audit, links
from storage.models import ChannelLink

log = logging.getLogger(__name__)

# Who the audit log names for a change Slack told the bot about, not a person.
SLACK = "slack"

LinkOutcome = Literal["created", "enabled", "exists"]


AdminCheck = Literal["admin", "not_admin", "external"]


async def admin_check(deps: Deps, user_id: str, team_id: str) -> AdminCheck:
    """Whether the user may change this workspace's billing links and settings.

    Admins and owners of *this* workspace (``team_id``, where the command or form came from)
    and the IDs in ``BOT_ADMINS``. In a Slack Connect channel the caller may belong to another
    organisation: ``users.info`` then names their own ``team_id`` (or ``is_stranger``), and
    their ``is_admin`` speaks for that organisation, not this one, so it is never trusted
    (https://api.slack.com/apis/channels-between-orgs: "users originating from other teams";
    https://api.slack.com/types/user: ``is_stranger``). Guests are never admins.
    """
    if user_id in deps.settings.BOT_ADMINS:
        return "admin"
    response = await deps.slack.users_info(user=user_id)
    user = response.get("user") or {}
    if user.get("is_stranger") or (team_id and user.get("team_id") != team_id):
        return "external"
    if user.get("is_restricted") or user.get("is_ultra_restricted"):
        return "not_admin"
    admin = user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner")
    return "admin" if admin else "not_admin"


def admin_refusal(check: AdminCheck, what: str) -> str:
    """Why someone who is not this workspace's admin may not do ``what``."""
    if check == "external":
        return (
            f"Only admins of this workspace can {what}; you are a member of another "
            "organization in this shared channel (Slack Connect)."
        )
    return f"Only workspace admins and owners (and the bot's configured admins) can {what}."


async def require_admin(deps: Deps, user_id: str, team_id: str, what: str) -> None:
    check = await admin_check(deps, user_id, team_id)
    if check != "admin":
        raise Refusal(admin_refusal(check, what))


async def linked_orgs(deps: Deps, team_id: str, channel_id: str) -> list[str]:
    rows = await deps.db.run(links.links_for_channel, team_id=team_id, channel_id=channel_id)
    return sorted(row.org_id for row in rows)


def choose_org(linked: list[str], requested: str | None) -> str:
    """The org a command is about: the one asked for if this channel links it, else the only one."""
    if not linked:
        raise Refusal(
            "This channel is not linked to an Atlas organization yet. "
            "An admin can link one with `/atlas-billing link ORG_ID`."
        )
    if requested is not None:
        if requested not in linked:
            raise Refusal(
                f"Org `{requested}` is not linked to this channel. Linked here: "
                + ", ".join(f"`{o}`" for o in linked)
            )
        return requested
    if len(linked) > 1:
        raise Refusal(
            "This channel links several orgs; add the ORG_ID to the command. Linked here: "
            + ", ".join(f"`{o}`" for o in linked)
        )
    return linked[0]


def choose_orgs(linked: list[str], requested: str | None) -> list[str]:
    """Like ``choose_org``, but without an ORG_ID every linked org is meant (``pending``)."""
    return [choose_org(linked, requested)] if requested is not None or not linked else linked


def _link_and_audit(
    session: Session, *, team_id: str, channel_id: str, org_id: str, user_id: str
) -> LinkOutcome:
    row, created = links.add_link(
        session, team_id=team_id, channel_id=channel_id, org_id=org_id, created_by=user_id
    )
    if created:
        outcome: LinkOutcome = "created"
    elif row.id is not None and links.enable_link(session, link_id=row.id):
        outcome = "enabled"
    else:
        return "exists"
    audit.record(
        session,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        action="link" if created else "enable",
        detail={"org_id": org_id},
    )
    return outcome


def _unlink_and_audit(
    session: Session, *, team_id: str, channel_id: str, org_id: str, user_id: str
) -> bool:
    removed = links.remove_link(session, team_id=team_id, channel_id=channel_id, org_id=org_id)
    if removed:
        audit.record(
            session,
            team_id=team_id,
            channel_id=channel_id,
            user_id=user_id,
            action="unlink",
            detail={"org_id": org_id},
        )
    return removed


async def link(
    deps: Deps, *, team_id: str, channel_id: str, user_id: str, org_id: str
) -> LinkOutcome:
    """Link after checking the bot can read the org's billing: a new link, a disabled one
    turned back on, or one that already was there.

    The check reads the pending invoice: an Atlas error (403 without the
    Billing Viewer role, 404 for an unknown org) propagates and nothing is stored.
    """
    atlas = await deps.credentials.client(org_id)
    await atlas.pending_invoices(org_id)
    return await deps.db.run(
        _link_and_audit, team_id=team_id, channel_id=channel_id, org_id=org_id, user_id=user_id
    )


async def unlink(deps: Deps, *, team_id: str, channel_id: str, user_id: str, org_id: str) -> bool:
    return await deps.db.run(
        _unlink_and_audit, team_id=team_id, channel_id=channel_id, org_id=org_id, user_id=user_id
    )


def _audit_each(
    session: Session,
    rows: list[ChannelLink],
    *,
    team_id: str,
    channel_id: str,
    user_id: str,
    action: str,
    **detail: str,
) -> list[str]:
    """One audit entry per link changed; returns their orgs."""
    for row in rows:
        audit.record(
            session,
            team_id=team_id,
            channel_id=channel_id,
            user_id=user_id,
            action=action,
            detail={"org_id": row.org_id, **detail},
        )
    return [row.org_id for row in rows]


def _disable_and_audit(
    session: Session, *, team_id: str, channel_id: str, user_id: str, noticed: str
) -> list[str]:
    where = {"team_id": team_id, "channel_id": channel_id}
    disabled = links.disable_channel(
        session, team_id=team_id, channel_id=channel_id, reason=links.ARCHIVED
    )
    return _audit_each(
        session,
        disabled,
        **where,
        user_id=user_id,
        action="disable",
        reason=links.ARCHIVED,
        noticed=noticed,
    )


def _enable_and_audit(
    session: Session, *, team_id: str, channel_id: str, user_id: str
) -> list[str]:
    where = {"team_id": team_id, "channel_id": channel_id}
    enabled = links.enable_channel(session, **where, reason=links.ARCHIVED)
    return _audit_each(
        session, enabled, **where, user_id=user_id, action="enable", reason="channel unarchived"
    )


async def channel_archived(
    deps: Deps, *, team_id: str, channel_id: str, noticed: str, user_id: str = SLACK
) -> list[str]:
    """Disable the channel's links; returns the orgs disabled now (none if they already were)."""
    orgs = await deps.db.run(
        _disable_and_audit,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        noticed=noticed,
    )
    if orgs:
        log.warning("channel %s was archived (%s): links to %s disabled", channel_id, noticed, orgs)
    return orgs


async def channel_unarchived(
    deps: Deps, *, team_id: str, channel_id: str, user_id: str = SLACK
) -> list[str]:
    """Enable the links archiving disabled; returns those orgs."""
    orgs = await deps.db.run(
        _enable_and_audit, team_id=team_id, channel_id=channel_id, user_id=user_id
    )
    if orgs:
        log.info("channel %s was unarchived: links to %s enabled again", channel_id, orgs)
    return orgs


async def slack_refused(
    deps: Deps, *, team_id: str, channel_id: str, error: str, method: str
) -> None:
    """What a Slack refusal says about the channel: ``is_archived`` disables its links."""
    if error == "is_archived":
        await channel_archived(
            deps, team_id=team_id, channel_id=channel_id, noticed=f"{method}: is_archived"
        )
