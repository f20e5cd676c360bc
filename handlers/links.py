"""``link``, ``unlink`` and ``status``: which Atlas orgs a channel follows."""

from __future__ import annotations

from bot import channels
from bot.render.blocks import notice
from handlers.grammar import Link, Status, Unlink
from handlers.invocation import Invocation


async def link(invocation: Invocation, command: Link) -> None:
    created = await channels.link(
        invocation.deps,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        user_id=invocation.user_id,
        org_id=command.org_id,
    )
    if created:
        await invocation.post(
            notice(f"<@{invocation.user_id}> linked this channel to Atlas org `{command.org_id}`.")
        )
    else:
        await invocation.ephemeral(f"This channel is already linked to org `{command.org_id}`.")


async def unlink(invocation: Invocation, command: Unlink) -> None:
    removed = await channels.unlink(
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
    state = await channels.status(
        invocation.deps, team_id=invocation.team_id, channel_id=invocation.channel_id
    )
    if not state.links:
        await invocation.ephemeral(
            "This channel is not linked to any Atlas org. "
            "An admin can link one with `/atlas-billing link ORG_ID`."
        )
        return
    lines = ["This channel follows these Atlas orgs:"]
    lines += [
        f"• `{row.org_id}` (linked by <@{row.created_by}> on {row.created_at:%Y-%m-%d})"
        for row in state.links
    ]
    lines.append("Thresholds, on-call and digests: not configured.")
    await invocation.ephemeral("\n".join(lines))
