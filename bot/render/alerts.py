"""Threshold alerts as Block Kit: the alert with its buttons, and its acknowledged or snoozed form.

Pure. The buttons carry the alert's ID; the handler that receives a click
stores it and calls ``acknowledged_message`` / ``snoozed_message`` on the
blocks Slack sent back, so the message changes in place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    SectionBlock,
)

from bot.core.money import format_cents
from bot.render.blocks import Message, _finish, _md, ranked
from bot.render.digests import month_name

LEVELS = ("50", "80", "100", "forecast")
LEVEL_LABELS = {
    "50": "50% of the threshold",
    "80": "80% of the threshold",
    "100": "the threshold",
    "forecast": "forecast over the threshold",
}
SEVERITY = {
    "50": ":warning:",
    "80": ":rotating_light:",
    "100": ":fire:",
    "forecast": ":chart_with_upwards_trend:",
}
ACK_ACTION = "alert_ack"
SNOOZE_ACTION = "alert_snooze"
HEADLINE_BLOCK = "alert_headline"
ACTIONS_BLOCK = "alert_actions"
_ALERT_ACTIONS = {ACK_ACTION, SNOOZE_ACTION}
_PERIOD = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_TENTH = Decimal("0.1")


def percent_of(amount_cents: int, threshold_cents: int) -> Decimal:
    """``amount`` as a percentage of ``threshold``, one decimal, half-even."""
    if threshold_cents <= 0:
        raise ValueError(f"a threshold must be positive, not {threshold_cents} cents")
    ratio = Decimal(amount_cents) * 100 / Decimal(threshold_cents)
    return ratio.quantize(_TENTH, rounding=ROUND_HALF_EVEN)


def headline(*, org_id: str, level: str, threshold_cents: int) -> str:
    """``Atlas spend for org `…` reached 80% of its $5,000.00 threshold`` (no emoji)."""
    threshold = format_cents(threshold_cents)
    subject = f"Atlas spend for org `{org_id}`"
    match level:
        case "50" | "80":
            return f"{subject} reached {level}% of its {threshold} threshold"
        case "100":
            return f"{subject} reached its {threshold} threshold"
        case "forecast":
            return f"{subject} is forecast to pass its {threshold} threshold this month"
    raise ValueError(f"unknown alert level {level!r}; expected one of {', '.join(LEVELS)}")


def _period(period: str) -> date:
    match = _PERIOD.fullmatch(period)
    if match is None:
        raise ValueError(f"{period!r} is not a billing period like 2026-11")
    return date(int(match[1]), int(match[2]), 1)


def _ack_button(alert_id: int | str) -> ButtonElement:
    return ButtonElement(
        text="Acknowledge", action_id=ACK_ACTION, value=str(alert_id), style="primary"
    )


def alert_message(
    *,
    alert_id: int,
    org_id: str,
    period: str,
    level: str,
    amount_cents: int,
    threshold_cents: int,
    forecast_cents: int,
    top_projects: Sequence[tuple[str, int]],
    oncall: str | None,
    also_crossed: Sequence[str] = (),
) -> Message:
    """The alert: headline (on-call mention first, so it notifies), amounts, projects, buttons."""
    title = headline(org_id=org_id, level=level, threshold_cents=threshold_cents)
    month = month_name(_period(period))
    mention = f"{oncall} " if oncall else ""
    percent = percent_of(amount_cents, threshold_cents)
    forecast_percent = percent_of(forecast_cents, threshold_cents)
    blocks: list[Block] = [
        SectionBlock(
            block_id=HEADLINE_BLOCK,
            text=_md(f"{mention}{SEVERITY[level]} *{title}*"),
            fields=[
                _md(f"*Month to date ({month})*\n{format_cents(amount_cents)}"),
                _md(f"*Threshold*\n{format_cents(threshold_cents)}"),
                _md(f"*Of the threshold*\n{percent:,}%"),
                _md(
                    f"*Month-end forecast*\n{format_cents(forecast_cents)}"
                    f" ({forecast_percent:,}% of the threshold)"
                ),
            ],
        ),
        SectionBlock(text=_md("*Projects driving the spend*\n" + ranked(top_projects))),
    ]
    others = [LEVEL_LABELS.get(other, other) for other in also_crossed if other != level]
    context = f"Alert #{alert_id} · billing period {period}"
    if others:
        context += " · also crossed in this check: " + ", ".join(others)
    blocks.append(ContextBlock(elements=[_md(context)]))
    blocks.append(
        ActionsBlock(
            block_id=ACTIONS_BLOCK,
            elements=[
                _ack_button(alert_id),
                ButtonElement(text="Snooze 24 h", action_id=SNOOZE_ACTION, value=str(alert_id)),
            ],
        )
    )
    text = f"{mention}{title}: {format_cents(amount_cents)} so far ({percent:,}%)"
    return _finish(text, blocks)


def _utc(moment: datetime) -> str:
    """``2026-11-23 14:05 UTC``; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _is_alert_actions(block: dict[str, Any]) -> bool:
    return block.get("type") == "actions" and any(
        element.get("action_id") in _ALERT_ACTIONS for element in block.get("elements", ())
    )


def _alert_id(blocks: Sequence[dict[str, Any]]) -> str | None:
    for block in blocks:
        if _is_alert_actions(block):
            for element in block["elements"]:
                if element.get("action_id") in _ALERT_ACTIONS and element.get("value"):
                    return str(element["value"])
    return None


_MENTION = re.compile(r"<[@!][^>]*>\s*")
_EMOJI = re.compile(r":[a-z0-9_+\-]+:\s*")


def _headline_text(blocks: Sequence[dict[str, Any]]) -> str:
    """The alert's headline as plain words, for the updated message's ``text``."""
    sections = [b for b in blocks if b.get("type") == "section" and b.get("text")]
    # Our block ID when Slack kept it, else the first section: the alert starts with it.
    ours = [b for b in sections if b.get("block_id") == HEADLINE_BLOCK]
    for block in ours or sections[:1]:
        first = block["text"].get("text", "").split("\n", 1)[0]
        text = _EMOJI.sub("", _MENTION.sub("", first)).replace("*", "").strip()
        if text:
            return text
    return "Atlas spend alert"


def _replace_actions(
    original_blocks: Sequence[dict[str, Any]], replacement: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The blocks with the alert's buttons swapped for ``replacement``, in the same place."""
    blocks: list[dict[str, Any]] = []
    replaced = False
    for block in original_blocks:
        if _is_alert_actions(block):
            if not replaced:
                blocks.extend(replacement)
                replaced = True
            continue
        blocks.append(block)
    if not replaced:
        blocks.extend(replacement)
    return blocks


def acknowledged_message(
    original_blocks: list[dict[str, Any]], *, user_id: str, at: datetime
) -> Message:
    """The alert with its buttons replaced by who acknowledged it and when."""
    line = f"✅ Acknowledged by <@{user_id}> at {_utc(at)}"
    status = ContextBlock(elements=[_md(line)]).to_dict()
    blocks = _replace_actions(original_blocks, [status])
    return Message(text=f"{_headline_text(original_blocks)} (acknowledged)", blocks=blocks)


def snoozed_message(
    original_blocks: list[dict[str, Any]], *, user_id: str, until: datetime
) -> Message:
    """The alert snoozed: who and until when, keeping Acknowledge so it can still be closed."""
    line = (
        f"😴 Snoozed by <@{user_id}> until {_utc(until)}; new alerts for this org wait until then"
    )
    replacement = [ContextBlock(elements=[_md(line)]).to_dict()]
    alert_id = _alert_id(original_blocks)
    if alert_id is not None:
        replacement.append(
            ActionsBlock(block_id=ACTIONS_BLOCK, elements=[_ack_button(alert_id)]).to_dict()
        )
    blocks = _replace_actions(original_blocks, replacement)
    return Message(text=f"{_headline_text(original_blocks)} (snoozed)", blocks=blocks)
