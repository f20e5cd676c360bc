"""Billing use cases shared by the CLI, the Slack handlers and the jobs.

They turn the client's typed results into summaries (exact cents, sorted
breakdowns); rendering them as text or Block Kit is somebody else's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from bot.atlas import AtlasClient, CostResult, Invoice

if TYPE_CHECKING:  # the CLI's `atlas` commands use this module without loading the bot
    from bot.deps import Deps


def _top(totals: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """Biggest first; ties by name so the order is stable."""
    return tuple(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True)
class InvoiceSummary:
    org_id: str
    invoice_id: str
    status: str
    start: date | None
    end: date | None
    usage_cents: int
    credits_cents: int
    tax_cents: int
    billed_cents: int
    owed_cents: int
    line_items: int
    by_project: tuple[tuple[str, int], ...]
    by_sku: tuple[tuple[str, int], ...]
    by_cluster: tuple[tuple[str, int], ...]

    @property
    def period(self) -> str:
        if not (self.start and self.end):
            return "unknown period"
        return f"{self.start:%b %-d, %Y} – {self.end:%b %-d, %Y}"

    def to_json(self) -> dict[str, object]:
        return {
            "orgId": self.org_id,
            "invoiceId": self.invoice_id,
            "statusName": self.status,
            "startDate": self.start.isoformat() if self.start else None,
            "endDate": self.end.isoformat() if self.end else None,
            "usageCents": self.usage_cents,
            "creditsCents": self.credits_cents,
            "salesTaxCents": self.tax_cents,
            "amountBilledCents": self.billed_cents,
            "owedCents": self.owed_cents,
            "lineItemCount": self.line_items,
            "byProject": [{"name": n, "amountCents": c} for n, c in self.by_project],
            "bySku": [{"name": n, "amountCents": c} for n, c in self.by_sku],
            "byCluster": [{"name": n, "amountCents": c} for n, c in self.by_cluster],
        }


def summarise_invoice(invoice: Invoice, org_id: str) -> InvoiceSummary:
    return InvoiceSummary(
        org_id=invoice.org_id or org_id,
        invoice_id=invoice.id,
        status=invoice.status_name or "UNKNOWN",
        start=invoice.start_date.date() if invoice.start_date else None,
        end=invoice.end_date.date() if invoice.end_date else None,
        usage_cents=invoice.usage_cents,
        credits_cents=invoice.credits_cents,
        tax_cents=invoice.sales_tax_cents,
        billed_cents=invoice.amount_billed_cents,
        owed_cents=invoice.owed_cents,
        line_items=len(invoice.line_items),
        by_project=_top(invoice.cents_by("project")),
        by_sku=_top(invoice.cents_by("sku")),
        by_cluster=_top(invoice.cents_by("cluster")),
    )


@dataclass(frozen=True)
class PendingSummary:
    """Month-to-date spend of one org: its pending invoice(s) and their total."""

    org_id: str
    invoices: tuple[InvoiceSummary, ...]

    @property
    def usage_cents(self) -> int:
        return sum(i.usage_cents for i in self.invoices)

    @property
    def billed_cents(self) -> int:
        return sum(i.billed_cents for i in self.invoices)

    def merged(self, attribute: str) -> tuple[tuple[str, int], ...]:
        totals: dict[str, int] = {}
        for invoice in self.invoices:
            for name, cents in getattr(invoice, attribute):
                totals[name] = totals.get(name, 0) + cents
        return _top(totals)

    def to_json(self) -> dict[str, object]:
        return {
            "orgId": self.org_id,
            "usageCents": self.usage_cents,
            "amountBilledCents": self.billed_cents,
            "invoices": [i.to_json() for i in self.invoices],
        }


async def pending(client: AtlasClient, org_id: str) -> PendingSummary:
    invoices = await client.pending_invoices(org_id)
    return PendingSummary(
        org_id=org_id, invoices=tuple(summarise_invoice(i, org_id) for i in invoices)
    )


async def org_pending(deps: Deps, org_id: str) -> PendingSummary:
    """Month-to-date spend of one org, read with the client that org uses right now (its
    own credentials when an admin connected some)."""
    return await pending(await deps.credentials.client(org_id), org_id)


async def invoice(client: AtlasClient, org_id: str, invoice_id: str) -> InvoiceSummary:
    return summarise_invoice(await client.invoice(org_id, invoice_id), org_id)


@dataclass(frozen=True)
class CostSummary:
    """A ready Cost Explorer result: total, per month, and per group of the chosen dimension."""

    group_by: str
    total_cents: int
    rows: int
    by_group: tuple[tuple[str, int], ...]
    by_month: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, object]:
        return {
            "groupBy": self.group_by,
            "totalCents": self.total_cents,
            "rowCount": self.rows,
            "byGroup": [{"name": n, "amountCents": c} for n, c in self.by_group],
            "byMonth": [{"month": m, "amountCents": c} for m, c in self.by_month],
        }


def summarise_costs(result: CostResult, group_by: str | None) -> CostSummary:
    dimension = group_by or "services"
    return CostSummary(
        group_by=dimension,
        total_cents=result.total_cents,
        rows=len(result.rows),
        by_group=_top(result.cents_by(dimension)),
        by_month=tuple(sorted(result.cents_by("months").items())),
    )
