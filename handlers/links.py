"""``link``, ``unlink`` and ``status``: which Atlas orgs a channel follows; and Slack's channel
life-cycle events: an archived channel's links are disabled, an unarchived channel's links come
back (see ``bot.services.links`` for what disabled means)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.deps import Deps
from bot.render.blocks import notice
from bot.render.links import status_text
from bot.services import links, settings
from handlers.grammar import Link, Status, Unlink
from handlers.invocation import Invocation


async def link(invocation: Invocation, command: Link) -> None:
    """Link this channel to an Atlas organization (the bot checks it can read its billing)"""
    outcome = await links.link(
        invocation.deps,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        user_id=invocation.user_id,
        org_id=command.org_id,
    )
    if outcome == "created":
        await invocation.post(
            notice(f"<@{invocation.user_id}> linked this channel to Atlas org `{command.org_id}`.")
        )
    elif outcome == "enabled":
        await invocation.post(
            notice(
                f"<@{invocation.user_id}> turned the link to Atlas org `{command.org_id}` back on: "
                "its threshold alerts and digests resume."
            )
        )
    else:
        await invocation.ephemeral(f"This channel is already linked to org `{command.org_id}`.")


async def unlink(invocation: Invocation, command: Unlink) -> None:
    """Remove the link with its thresholds and schedules"""
    removed = await links.unlink(
        invocation.deps,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        user_id=invocation.user_id,
        org_id=command.org_id,
    )
    if removed:
        await invocation.post(
            notice(
                f"<@{invocation.user_id}> unlinked Atlas org `{command.org_id}` from this channel."
            )
        )
    else:
        await invocation.ephemeral(f"Org `{command.org_id}` is not linked to this channel.")


async def status(invocation: Invocation, command: Status) -> None:
    """This channel's links, thresholds, on-call target and digest schedule"""
    state = await settings.state(
        invocation.deps, team_id=invocation.team_id, channel_id=invocation.channel_id
    )
    if not state.links:
        await invocation.ephemeral(
            "This channel is not linked to any Atlas org. "
            "An admin can link one with `/atlas-billing link ORG_ID`."
        )
        return
    await invocation.ephemeral(status_text(state))


# ---- channel life-cycle events -----------------------------------------------------------

ARCHIVE = ("channel_archive", "group_archive")
UNARCHIVE = ("channel_unarchive", "group_unarchive")


def _where(body: dict[str, Any], event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(team, channel, user) of the event, or None when Slack left one out."""
    team_id, channel_id = body.get("team_id"), event.get("channel")
    if not isinstance(team_id, str) or not isinstance(channel_id, str):
        return None
    user_id = event.get("user")
    return team_id, channel_id, user_id if isinstance(user_id, str) else links.SLACK


def register(app: AsyncApp, deps: Deps) -> None:
    async def archived(body: dict[str, Any], event: dict[str, Any]) -> None:
        if (where := _where(body, event)) is not None:
            team_id, channel_id, user_id = where
            await links.channel_archived(
                deps,
                team_id=team_id,
                channel_id=channel_id,
                user_id=user_id,
                noticed=f"{event['type']} event",
            )

    async def unarchived(body: dict[str, Any], event: dict[str, Any]) -> None:
        if (where := _where(body, event)) is not None:
            team_id, channel_id, user_id = where
            await links.channel_unarchived(
                deps, team_id=team_id, channel_id=channel_id, user_id=user_id
            )

    for name in ARCHIVE:
        app.event(name)(archived)
    for name in UNARCHIVE:
        app.event(name)(unarchived)
