"""``threshold``, ``oncall`` and ``digest``: how a channel is alerted and kept informed."""

from __future__ import annotations

from datetime import datetime

from bot.core.money import format_cents
from bot.render.blocks import notice, oncall_mention
from bot.services import digests, settings
from handlers.grammar import Digest, OnCall, Threshold
from handlers.invocation import Invocation


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


async def threshold(invocation: Invocation, command: Threshold) -> None:
    """Alert when the month's spend passes an amount in USD (5000, $5,000, 5000.50)"""
    org_id, changed = await settings.set_threshold(
        invocation.deps,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        user_id=invocation.user_id,
        org_id=command.org_id,
        amount_cents=command.amount_cents,
    )
    if command.amount_cents is None:
        if not changed:
            await invocation.ephemeral(f"Org `{org_id}` has no threshold in this channel.")
            return
        text = f"<@{invocation.user_id}> removed the monthly spend threshold of org `{org_id}`."
    else:
        text = (
            f"<@{invocation.user_id}> set the monthly spend threshold of org `{org_id}` to "
            f"{format_cents(command.amount_cents)}. Alerts at 50%, 80% and 100%, and when the "
            "month-end forecast passes it."
        )
    await invocation.post(notice(text))


async def oncall(invocation: Invocation, command: OnCall) -> None:
    """Who is mentioned in threshold alerts"""
    await settings.set_oncall(
        invocation.deps,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        user_id=invocation.user_id,
        kind=command.kind,
        target=command.id,
    )
    if command.kind is None:
        text = f"<@{invocation.user_id}> cleared the on-call target: alerts mention nobody."
    else:
        who = oncall_mention(command.kind, command.id)
        text = f"<@{invocation.user_id}> set the on-call target for threshold alerts to {who}."
    await invocation.post(notice(text))


async def digest(invocation: Invocation, command: Digest) -> None:
    """Monthly spend summary (default day 1 at 09:00 UTC; DAY 1–31 or last); `now` posts one at once"""
    deps = invocation.deps
    if command.action == "now":
        link = await settings.link_for(
            deps,
            team_id=invocation.team_id,
            channel_id=invocation.channel_id,
            org_id=command.org_id,
        )
        month = await digests.start_now(deps, link, invocation.user_id)
        await invocation.ephemeral(
            f"Preparing the {month:%B %Y} digest of org `{link.org_id}`; "
            "it is posted here as soon as Atlas has the numbers."
        )
        return
    day = str(command.day) if command.action == "on" else None
    runs = await settings.set_digest(
        deps,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        user_id=invocation.user_id,
        day=day,
        at=command.time if command.action == "on" else None,
    )
    if day is None:
        await invocation.post(notice(f"<@{invocation.user_id}> switched off the monthly digest."))
        return
    lines = [f"<@{invocation.user_id}> scheduled the monthly Atlas digest:"]
    for org, first in runs:
        assert first is not None  # `digest on` always has a day and a time: each org has a run
        lines.append(f"• org `{org}`: first run {_when(first)}")
    await invocation.post(notice("\n".join(lines)))
