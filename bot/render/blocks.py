"""Block Kit rendering of billing summaries: pure functions from domain results to messages.

Built with slack_sdk's Block Kit models so the shapes are Slack's own; every
list is cut to fit Slack's limits and ends with "… and N more".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.core.money import format_cents
from bot.services.spend import CostSummary, InvoiceSummary, PendingSummary

SECTION_TEXT_LIMIT = 3000
MAX_BLOCKS = 50
TOP = 5


@dataclass(frozen=True)
class Message:
    """A Slack message: notification text plus blocks."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def kwargs(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": self.blocks} if self.blocks else {"text": self.text}


def escape(text: str) -> str:
    """Slack mrkdwn control characters; names come from Atlas and users, never trusted."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def oncall_mention(kind: str | None, target: str | None) -> str | None:
    """How an on-call target is mentioned, so Slack notifies it: ``<@U…>`` for a user,
    ``<!subteam^S…>`` for a user group; None when there is none."""
    if not kind or not target:
        return None
    return f"<@{target}>" if kind == "user" else f"<!subteam^{target}>"


def _md(text: str) -> MarkdownTextObject:
    if len(text) > SECTION_TEXT_LIMIT:
        text = text[: SECTION_TEXT_LIMIT - 1] + "…"
    return MarkdownTextObject(text=text)


def ranked(pairs: Sequence[tuple[str, int]], limit: int = TOP) -> str:
    """``• name — $1.00`` lines, the rest folded into "… and N more (total)"."""
    if not pairs:
        return "_none_"
    lines = [f"• {escape(name)} — {format_cents(cents)}" for name, cents in pairs[:limit]]
    if len(pairs) > limit:
        rest = sum(cents for _, cents in pairs[limit:])
        lines.append(f"… and {len(pairs) - limit} more ({format_cents(rest)})")
    return "\n".join(lines)


def _finish(text: str, blocks: list[Block]) -> Message:
    dicts = [b.to_dict() for b in blocks]
    if len(dicts) > MAX_BLOCKS:
        dropped = len(dicts) - (MAX_BLOCKS - 1)
        dicts = dicts[: MAX_BLOCKS - 1]
        dicts.append(ContextBlock(elements=[_md(f"… and {dropped} more blocks")]).to_dict())
    return Message(text=text, blocks=dicts)


def pending_message(summaries: Sequence[PendingSummary]) -> Message:
    total = sum(s.usage_cents for s in summaries)
    blocks: list[Block] = [HeaderBlock(text="Month-to-date Atlas spend")]
    for summary in summaries:
        if not summary.invoices:
            blocks.append(SectionBlock(text=_md(f"*Org `{summary.org_id}`*: no pending invoice")))
            continue
        period = summary.invoices[0].period
        blocks.append(
            SectionBlock(
                text=_md(
                    f"*Org `{summary.org_id}`*: *{format_cents(summary.usage_cents)}* so far"
                    f" ({period})"
                ),
                fields=[
                    _md("*Top projects*\n" + ranked(summary.merged("by_project"))),
                    _md("*Top SKUs*\n" + ranked(summary.merged("by_sku"))),
                ],
            )
        )
        blocks.append(
            ContextBlock(
                elements=[
                    _md(
                        f"Billed so far incl. tax {format_cents(summary.billed_cents)}"
                        f" · {sum(i.line_items for i in summary.invoices):,} line items"
                    )
                ]
            )
        )
    text = f"Month-to-date Atlas spend: {format_cents(total)}"
    return _finish(text, blocks)


def invoice_message(summary: InvoiceSummary, *, csv_rows: int | None = None) -> Message:
    amounts = "\n".join(
        [
            f"Usage subtotal: *{format_cents(summary.usage_cents)}*",
            f"Credits: {format_cents(summary.credits_cents)}",
            f"Sales tax: {format_cents(summary.tax_cents)}",
            f"Billed: *{format_cents(summary.billed_cents)}*",
            f"Owed: *{format_cents(summary.owed_cents)}*",
        ]
    )
    blocks: list[Block] = [
        HeaderBlock(text=f"Atlas invoice {summary.invoice_id}"),
        SectionBlock(
            text=_md(f"Org `{summary.org_id}` · {summary.status} · {summary.period}\n{amounts}")
        ),
        SectionBlock(
            fields=[
                _md("*Top projects*\n" + ranked(summary.by_project)),
                _md("*Top SKUs*\n" + ranked(summary.by_sku)),
            ]
        ),
    ]
    rows = csv_rows if csv_rows is not None else summary.line_items
    blocks.append(ContextBlock(elements=[_md(f"{rows:,} line items; the full CSV follows")]))
    text = f"Atlas invoice {summary.invoice_id}: billed {format_cents(summary.billed_cents)}"
    return _finish(text, blocks)


def _range(start: date, end: date) -> str:
    return f"{start:%Y-%m} to {end:%Y-%m} (end exclusive)"


def costs_started_message(
    org_id: str, start: date, end: date, group_by: str | None, user_id: str
) -> Message:
    by = f" by {group_by}" if group_by else ""
    text = f"Cost Explorer query started for org {org_id}, {_range(start, end)}{by}"
    blocks: list[Block] = [
        SectionBlock(
            text=_md(
                f":hourglass_flowing_sand: Cost Explorer: org `{org_id}`, {_range(start, end)}{by}"
            )
        ),
        ContextBlock(
            elements=[_md(f"Asked by <@{user_id}>. The result will appear here when Atlas has it.")]
        ),
    ]
    return _finish(text, blocks)


def costs_result_message(
    org_id: str, start: date, end: date, summary: CostSummary, user_id: str
) -> Message:
    months = "\n".join(
        f"• {month} — {format_cents(cents)}" for month, cents in summary.by_month[:24]
    )
    blocks: list[Block] = [
        SectionBlock(
            text=_md(
                f":bar_chart: Cost Explorer: org `{org_id}`, {_range(start, end)}\n"
                f"Total: *{format_cents(summary.total_cents)}*"
            )
        ),
        SectionBlock(
            fields=[
                _md("*By month*\n" + (months or "_none_")),
                _md(f"*By {summary.group_by}*\n" + ranked(summary.by_group, 10)),
            ]
        ),
        ContextBlock(elements=[_md(f"Asked by <@{user_id}> · {summary.rows} usage rows")]),
    ]
    text = f"Cost Explorer result for org {org_id}: {format_cents(summary.total_cents)}"
    return _finish(text, blocks)


def costs_failed_message(org_id: str, start: date, end: date, reason: str, user_id: str) -> Message:
    text = f"Cost Explorer query for org {org_id} failed: {escape(reason)}"
    blocks: list[Block] = [
        SectionBlock(
            text=_md(
                f":warning: Cost Explorer: org `{org_id}`, {_range(start, end)}\n{escape(reason)}"
            )
        ),
        ContextBlock(elements=[_md(f"Asked by <@{user_id}>")]),
    ]
    return _finish(text, blocks)


def notice(text: str) -> Message:
    """A short text-only reply (help, status, refusals, errors)."""
    return Message(text=text)


def divider() -> dict[str, Any]:
    return DividerBlock().to_dict()
