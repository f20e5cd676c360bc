"""Channel ↔ org links: who may change them, which org a command means, and what a channel sees."""

from __future__ import annotations

from sqlmodel import Session

from bot.deps import Deps
from bot.explain import Refusal
from storage import audit, links


async def is_admin(deps: Deps, user_id: str) -> bool:
    """Workspace admins and owners (from ``users.info``) and the IDs in ``BOT_ADMINS``."""
    if user_id in deps.settings.BOT_ADMINS:
        return True
    response = await deps.slack.users_info(user=user_id)
    user = response.get("user") or {}
    return bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))


async def require_admin(deps: Deps, user_id: str, what: str) -> None:
    if not await is_admin(deps, user_id):
        raise Refusal(
            f"Only workspace admins and owners (and the bot's configured admins) can {what}."
        )


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
) -> bool:
    _, created = links.add_link(
        session, team_id=team_id, channel_id=channel_id, org_id=org_id, created_by=user_id
    )
    if created:
        audit.record(
            session,
            team_id=team_id,
            channel_id=channel_id,
            user_id=user_id,
            action="link",
            detail={"org_id": org_id},
        )
    return created


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


async def link(deps: Deps, *, team_id: str, channel_id: str, user_id: str, org_id: str) -> bool:
    """Link after checking the bot can read the org's billing; True if the link is new.

    The check reads the pending invoice: an Atlas error (403 without the
    Billing Viewer role, 404 for an unknown org) propagates and nothing is stored.
    """
    await deps.atlas_for(org_id).pending_invoices(org_id)
    return await deps.db.run(
        _link_and_audit, team_id=team_id, channel_id=channel_id, org_id=org_id, user_id=user_id
    )


async def unlink(deps: Deps, *, team_id: str, channel_id: str, user_id: str, org_id: str) -> bool:
    return await deps.db.run(
        _unlink_and_audit, team_id=team_id, channel_id=channel_id, org_id=org_id, user_id=user_id
    )
