"""What a channel's links look like to a person: ``status``."""

from __future__ import annotations

from bot.core.money import format_cents
from bot.render.blocks import oncall_mention
from bot.services.settings import ChannelState


def status_text(state: ChannelState) -> str:
    """The channel's links with their threshold, digest schedule and state, and its on-call."""
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
    oncall = oncall_mention(config.oncall_kind, config.oncall_id) if config else None
    oncall = oncall or "nobody (set one with `/atlas-billing oncall @user`)"
    lines.append(f"On-call for threshold alerts: {oncall}")
    return "\n".join(lines)
