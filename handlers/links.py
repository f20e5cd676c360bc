"""``link``, ``unlink`` and ``status``: which Atlas orgs a channel follows."""

from __future__ import annotations

from bot.render.blocks import notice
from bot.render.links import status_text
from bot.services import links, settings
from handlers.grammar import Link, Status, Unlink
from handlers.invocation import Invocation


async def link(invocation: Invocation, command: Link) -> None:
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
