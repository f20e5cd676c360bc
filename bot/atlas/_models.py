"""Typed billing results: invoices, line items, payments, refunds, Cost Explorer rows.

Models tolerate unknown fields (Atlas adds fields without a version bump) and
keep money exact: invoice amounts are integer cents, ``unitPrice`` and Cost
Explorer ``usageAmount`` are ``Decimal`` (the client parses JSON numbers as
``Decimal``, so no float ever carries a price).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from bot.core.money import dollars_to_cents


class _AtlasModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class LineItem(_AtlasModel):
    sku: str | None = None
    group_id: str | None = Field(default=None, alias="groupId")
    group_name: str | None = Field(default=None, alias="groupName")
    cluster_name: str | None = Field(default=None, alias="clusterName")
    total_price_cents: int = Field(default=0, alias="totalPriceCents")
    unit_price_dollars: Decimal | None = Field(default=None, alias="unitPriceDollars")
    quantity: Decimal | None = None
    unit: str | None = None
    note: str | None = None
    start_date: datetime | None = Field(default=None, alias="startDate")
    end_date: datetime | None = Field(default=None, alias="endDate")

    @property
    def project(self) -> str:
        return self.group_name or self.group_id or "(no project)"


class Payment(_AtlasModel):
    id: str | None = None
    amount_billed_cents: int = Field(default=0, alias="amountBilledCents")
    amount_paid_cents: int = Field(default=0, alias="amountPaidCents")
    sales_tax_cents: int = Field(default=0, alias="salesTaxCents")
    subtotal_cents: int = Field(default=0, alias="subtotalCents")
    unit_price: Decimal = Field(default=Decimal(1), alias="unitPrice")
    currency: str | None = None
    status_name: str | None = Field(default=None, alias="statusName")

    @field_validator("unit_price", mode="before")
    @classmethod
    def _unit_price(cls, value: object) -> object:
        # Atlas sends a decimal string; an absent or blank one means "no conversion".
        return Decimal(1) if value in (None, "") else value


class Refund(_AtlasModel):
    amount_cents: int = Field(default=0, alias="amountCents")
    payment_id: str | None = Field(default=None, alias="paymentId")
    reason: str | None = None


class InvoiceMetadata(_AtlasModel):
    """An entry of the invoice list: the invoice without line items or payments."""

    id: str
    org_id: str | None = Field(default=None, alias="orgId")
    status_name: str | None = Field(default=None, alias="statusName")
    start_date: datetime | None = Field(default=None, alias="startDate")
    end_date: datetime | None = Field(default=None, alias="endDate")
    subtotal_cents: int = Field(default=0, alias="subtotalCents")
    amount_billed_cents: int = Field(default=0, alias="amountBilledCents")
    amount_paid_cents: int = Field(default=0, alias="amountPaidCents")
    credits_cents: int = Field(default=0, alias="creditsCents")
    sales_tax_cents: int = Field(default=0, alias="salesTaxCents")
    starting_balance_cents: int = Field(default=0, alias="startingBalanceCents")


class Invoice(InvoiceMetadata):
    """One invoice in full: the metadata plus line items, payments and refunds."""

    line_items: tuple[LineItem, ...] = Field(default=(), alias="lineItems")
    payments: tuple[Payment, ...] = ()
    refunds: tuple[Refund, ...] = ()
    linked_invoices: tuple[Invoice, ...] = Field(default=(), alias="linkedInvoices")

    @property
    def usage_cents(self) -> int:
        """Sum of the line items: what the invoice CSV's Amount column adds up to."""
        return sum(item.total_price_cents for item in self.line_items)

    @property
    def owed_cents(self) -> int:
        """What the invoice still asks to be paid, from ATLAS-NOTES.md's formula.

        Our reading: each payment owes ``amountBilledCents × unitPrice +
        salesTaxCents`` (``unitPrice`` being a decimal conversion factor, 1 for
        USD); the invoice owes the sum over its payments, less its
        ``startingBalanceCents`` once (the balance belongs to the invoice, so
        subtracting it per payment would count it several times). An invoice
        with no payments yet (a pending one) owes ``amountBilledCents`` less
        its starting balance. Rounded half-even to the cent.
        """
        if not self.payments:
            return self.amount_billed_cents - self.starting_balance_cents
        owed = sum(
            (
                Decimal(p.amount_billed_cents) * p.unit_price + p.sales_tax_cents
                for p in self.payments
            ),
            Decimal(0),
        )
        return dollars_to_cents(owed / 100) - self.starting_balance_cents

    def cents_by(self, key: str) -> dict[str, int]:
        """Line-item cents grouped by ``project``, ``sku`` or ``cluster``."""
        getter: Callable[[LineItem], str] = {
            "project": lambda i: i.project,
            "sku": lambda i: i.sku or "(no SKU)",
            "cluster": lambda i: i.cluster_name or "(no cluster)",
        }[key]
        totals: dict[str, int] = defaultdict(int)
        for item in self.line_items:
            totals[getter(item)] += item.total_price_cents
        return dict(totals)


class CostRow(_AtlasModel):
    """One Cost Explorer usage row; ``usage_amount`` is in dollars, exact."""

    invoice_id: str | None = Field(default=None, alias="invoiceId")
    organization_id: str | None = Field(default=None, alias="organizationId")
    organization_name: str | None = Field(default=None, alias="organizationName")
    service: str | None = None
    usage_amount: Decimal = Field(default=Decimal(0), alias="usageAmount")
    usage_date: date | None = Field(default=None, alias="usageDate")
    project_id: str | None = Field(
        default=None, validation_alias=AliasChoices("projectId", "groupId")
    )
    project_name: str | None = Field(
        default=None, validation_alias=AliasChoices("projectName", "groupName")
    )
    cluster_name: str | None = Field(default=None, alias="clusterName")
    cluster_id: str | None = Field(
        default=None, validation_alias=AliasChoices("clusterId", "clusterUniqueId")
    )

    @property
    def cents(self) -> int:
        return dollars_to_cents(self.usage_amount)

    def key(self, dimension: str) -> str:
        """The row's label along one grouping dimension."""
        match dimension:
            case "services":
                return self.service or "(no service)"
            case "projects":
                return self.project_name or self.project_id or "(no project)"
            case "clusters":
                return self.cluster_name or self.cluster_id or "(no cluster)"
            case "organizations":
                return self.organization_name or self.organization_id or "(no organization)"
            case "months":
                return self.usage_date.strftime("%Y-%m") if self.usage_date else "(no date)"
        raise ValueError(f"unknown dimension {dimension!r}")


@dataclass(frozen=True)
class CostResult:
    """A ready Cost Explorer result (possibly empty)."""

    rows: tuple[CostRow, ...] = ()

    @property
    def total_cents(self) -> int:
        return dollars_to_cents(sum((r.usage_amount for r in self.rows), Decimal(0)))

    def cents_by(self, dimension: str) -> dict[str, int]:
        """Exact totals per label, summed in dollars and rounded once per label."""
        sums: dict[str, Decimal] = defaultdict(Decimal)
        for row in self.rows:
            sums[row.key(dimension)] += row.usage_amount
        return {label: dollars_to_cents(amount) for label, amount in sums.items()}


@dataclass(frozen=True)
class NotReady:
    """Cost Explorer has not finished the query: poll again later."""

    reason: str = "processing"


@dataclass(frozen=True)
class CostQuery:
    """A Cost Explorer request body, validated by the client before it is sent."""

    start: date
    end: date
    group_by: str | None = None
    organizations: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    clusters: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    include_partial_matches: bool = False

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "startDate": self.start.isoformat(),
            "endDate": self.end.isoformat(),
        }
        for name in ("organizations", "projects", "clusters", "services"):
            if values := getattr(self, name):
                body[name] = list(values)
        if self.group_by:
            body["groupBy"] = self.group_by
        if self.include_partial_matches:
            body["includePartialMatches"] = True
        return body
