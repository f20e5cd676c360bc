"""Slack's channel life-cycle events: an archived channel's links are disabled, an unarchived
channel's links come back (see ``bot.services.links`` for what disabled means)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.deps import Deps
from bot.services import links

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
