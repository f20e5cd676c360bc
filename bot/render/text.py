"""Plain-text rendering of billing summaries for the command line."""

from __future__ import annotations

from bot.core.money import format_cents
from bot.services.spend import CostSummary, InvoiceSummary, PendingSummary


def _rows(pairs: tuple[tuple[str, int], ...], limit: int) -> list[str]:
    shown = pairs[:limit]
    width = max((len(name) for name, _ in shown), default=0)
    lines = [f"  {name:<{width}}  {format_cents(cents):>14}" for name, cents in shown]
    if len(pairs) > limit:
        rest = sum(cents for _, cents in pairs[limit:])
        lines.append(f"  … and {len(pairs) - limit} more ({format_cents(rest)})")
    return lines


def _amounts(summary: InvoiceSummary) -> list[str]:
    pairs = [
        ("Usage subtotal", summary.usage_cents),
        ("Credits", summary.credits_cents),
        ("Sales tax", summary.tax_cents),
        ("Billed", summary.billed_cents),
        ("Owed", summary.owed_cents),
    ]
    return [f"  {label:<15}{format_cents(cents):>16}" for label, cents in pairs]


def invoice_text(summary: InvoiceSummary, *, top: int = 5) -> str:
    lines = [
        f"Invoice {summary.invoice_id}  ({summary.status}, {summary.period})",
        f"Organization {summary.org_id}, {summary.line_items:,} line items",
        *_amounts(summary),
    ]
    for title, pairs in (("Top projects", summary.by_project), ("Top SKUs", summary.by_sku)):
        if pairs:
            lines += ["", f"{title}:", *_rows(pairs, top)]
    return "\n".join(lines)


def pending_text(summary: PendingSummary, *, top: int = 5) -> str:
    if not summary.invoices:
        return f"Organization {summary.org_id} has no pending invoice."
    lines = [
        f"Month-to-date spend of organization {summary.org_id}: {format_cents(summary.usage_cents)}"
    ]
    for invoice in summary.invoices:
        lines += ["", invoice_text(invoice, top=top)]
    return "\n".join(lines)


def costs_text(summary: CostSummary, *, top: int = 10) -> str:
    lines = [f"Cost Explorer total: {format_cents(summary.total_cents)} ({summary.rows} rows)"]
    if summary.by_month:
        lines += ["", "By month:", *_rows(summary.by_month, 24)]
    if summary.by_group:
        lines += ["", f"By {summary.group_by}:", *_rows(summary.by_group, top)]
    return "\n".join(lines)
