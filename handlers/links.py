"""``link``, ``unlink`` and ``status``: which Atlas orgs a channel follows."""

from __future__ import annotations

from bot.core.money import format_cents
from bot.render.blocks import notice
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
    lines = ["*This channel follows these Atlas orgs:*"]
    for row in state.links:
        assert row.id is not None  # links read from the database have their id
        threshold = state.thresholds.get(row.id)
        schedule = state.schedules.get(row.id)
        limit = format_cents(threshold.amount_cents) if threshold else "none"
        digest = (
            f"day {schedule.day} at {schedule.hour:02d}:{schedule.minute:02d} UTC, next "
            f"{schedule.next_run_at:%Y-%m-%d %H:%M} UTC"
            if schedule
            else "off"
        )
        line = (
            f"• `{row.org_id}` (linked by <@{row.created_by}> on {row.created_at:%Y-%m-%d}): "
            f"threshold {limit}; digest {digest}"
        )
        if row.disabled_at is not None:
            line += (
                f" — *disabled* since {row.disabled_at:%Y-%m-%d} ({row.disabled_reason}): no "
                f"alerts or digests; `/atlas-billing link {row.org_id}` turns it back on"
            )
        lines.append(line)
    config = state.config
    if config and config.oncall_kind == "user":
        oncall = f"<@{config.oncall_id}>"
    elif config and config.oncall_kind == "usergroup":
        oncall = f"<!subteam^{config.oncall_id}>"
    else:
        oncall = "nobody (set one with `/atlas-billing oncall @user`)"
    lines.append(f"On-call for threshold alerts: {oncall}")
    await invocation.ephemeral("\n".join(lines))
