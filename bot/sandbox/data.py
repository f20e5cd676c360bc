"""Deterministic billing data for the sandbox Atlas: orgs, invoices, CSVs and Cost Explorer rows."""

from __future__ import annotations

import csv
import hashlib
import io
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any

from bot.core.months import add_months, first_of_month

CLOSED_MONTHS = 6
HUGE_LINE_ITEMS = 200_000
SMALL_ORG_NAMES = ("Acme Production", "Acme Staging", "Globex")
HUGE_ORG_NAME = "Initech Huge"
# The huge org bills 60 x 30 clusters in its latest closed month; 1,800 clusters x 4 SKUs x
# 28 days (the shortest month) = 201,600 slots, so 200,000 items always fit.
_HUGE_PROJECTS = 60
_HUGE_CLUSTERS_PER_PROJECT = 30

INVOICE_CSV_COLUMNS = (
    "Date",
    "Usage Date",
    "Description",
    "Note",
    "Organization Name",
    "Organization ID",
    "Project",
    "Project ID",
    "SKU",
    "Region",
    "Cluster",
    "Replica Set",
    "Config Server",
    "Application",
    "Unit",
    "Unit Price",
    "Quantity",
    "Discount Percent",
    "Amount",
)
COST_CSV_COLUMNS = (
    "Billed Date",
    "Invoice Id",
    "Organization Name",
    "Organization ID",
    "Project Name",
    "Project Id",
    "Cluster Name",
    "Cluster Unique Id",
    "Usage Amount",
)

_PROJECT_NAMES = (
    "Payments",
    "Storefront",
    "Data Platform",
    "Mobile API",
    "Search",
    "Analytics",
    "Internal Tools",
    "Identity",
)
_CLUSTER_WORDS = (
    "orders",
    "catalog",
    "sessions",
    "events",
    "inventory",
    "users",
    "metrics",
    "ledger",
    "reviews",
    "shipping",
)
_REGIONS = ("US_EAST_1", "US_WEST_2", "EU_WEST_1", "AP_SOUTHEAST_2")
_SIZES = (10, 20, 30, 40, 50, 60)
# Hourly price per node in micro-dollars, by instance size.
_SIZE_PRICE = {10: 80_000, 20: 200_000, 30: 540_000, 40: 1_040_000, 50: 2_000_000, 60: 3_950_000}
_NODES = 3


@dataclass(frozen=True)
class _Kind:
    """One billed dimension of a cluster-day."""

    sku: str  # for instances, completed with the size: ATLAS_AWS_INSTANCE_M30
    service: str
    description: str
    unit: str


_INSTANCE = _Kind("ATLAS_AWS_INSTANCE_M", "Clusters", "AWS Instance M", "server hours")
_STORAGE = _Kind("ATLAS_AWS_STORAGE_PROVISIONED", "Storage", "AWS Storage Provisioned", "GB days")
_BACKUP = _Kind(
    "ATLAS_AWS_BACKUP_SNAPSHOT_STORAGE", "Backup", "AWS Backup Snapshot Storage", "GB days"
)
_TRANSFER = _Kind(
    "ATLAS_AWS_DATA_TRANSFER_SAME_REGION", "Data Transfer", "AWS Data Transfer (Same Region)", "GB"
)
_KINDS = (_INSTANCE, _STORAGE, _BACKUP, _TRANSFER)
CREDIT_SKU = "CREDIT"

_MASK = (1 << 64) - 1


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def _hex24(*parts: object) -> str:
    return _digest(*parts)[:24]


def _number(*parts: object) -> int:
    return int(_digest(*parts)[:16], 16)


def _mix(value: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread hash for per-line-item variation."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _div_half_even(numerator: int, denominator: int) -> int:
    """Integer division of a non-negative numerator, rounding half to even (the banker's rule)."""
    quotient, remainder = divmod(numerator, denominator)
    if remainder * 2 > denominator or (remainder * 2 == denominator and quotient % 2):
        quotient += 1
    return quotient


def cents_text(cents: int) -> str:
    """``1234`` → ``12.34``; ``-5000`` → ``-50.00`` (the CSV's Amount form)."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"


def cents_to_float(cents: int) -> float:
    # n/100 is the double nearest the exact two-decimal value, so its repr has two decimals at most.
    return cents / 100


@lru_cache(maxsize=64)
def _price_text(micros: int) -> str:
    whole, rest = divmod(micros, 1_000_000)
    frac = f"{rest:06d}".rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"


def _quantity_text(hundredths: int) -> str:
    return f"{hundredths // 100}.{hundredths % 100:02d}"


@lru_cache(maxsize=4096)
def iso_z(moment: datetime | date) -> str:
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def _us_date(day: date) -> str:
    return f"{day.month:02d}/{day.day:02d}/{day.year}"


def _long_date(day: date) -> str:
    return f"{day:%B} {day.day}, {day.year}"


@dataclass(frozen=True)
class Credentials:
    """The sandbox's credentials: a service account, an API key pair, and a key with no role."""

    client_id: str
    client_secret: str
    public_key: str
    private_key: str
    no_role_public_key: str
    no_role_private_key: str


def make_credentials(seed: int) -> Credentials:
    def letters(*parts: object) -> str:
        raw = bytes.fromhex(_digest(*parts))
        return "".join(chr(ord("a") + b % 26) for b in raw[:8])

    def key_uuid(*parts: object) -> str:
        return str(uuid.UUID(bytes=bytes.fromhex(_digest(*parts))[:16], version=4))

    return Credentials(
        client_id="mdb_sa_id_" + _hex24(seed, "service-account"),
        client_secret="mdb_sa_sk_" + _digest(seed, "service-account-secret")[:40],
        public_key=letters(seed, "api-key"),
        private_key=key_uuid(seed, "api-key-private"),
        no_role_public_key=letters(seed, "no-role-key"),
        no_role_private_key=key_uuid(seed, "no-role-key-private"),
    )


@dataclass(frozen=True)
class Cluster:
    id: str
    name: str
    project_id: str
    project_name: str
    region: str
    base_size: int  # index into _SIZES
    disk_gb: int
    salt: int
    since: date | None  # the first month it is billed (None: always)


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    clusters: tuple[Cluster, ...]


@dataclass(frozen=True, slots=True)
class LineItem:
    """One invoice line: a cluster-day of one SKU, or an org-level credit (``cluster`` None)."""

    sku: str
    service: str
    description: str
    unit: str
    start: date
    end: date
    cluster: Cluster | None
    quantity_hundredths: int
    unit_price_micros: int
    discount_percent: int
    discount_cents: int
    total_cents: int
    note: str

    @property
    def created(self) -> datetime:
        # Atlas writes a day's usage early the next morning.
        return datetime(self.end.year, self.end.month, self.end.day, 3, 17, tzinfo=UTC)

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "sku": self.sku,
            "startDate": iso_z(self.start),
            "endDate": iso_z(self.end),
            "created": iso_z(self.created),
            "quantity": self.quantity_hundredths / 100,
            "unit": self.unit,
            "unitPriceDollars": self.unit_price_micros / 1_000_000,
            "totalPriceCents": self.total_cents,
            "note": self.note,
        }
        if self.cluster is not None:
            item["cloudProvider"] = "AWS"
            item["groupId"] = self.cluster.project_id
            item["groupName"] = self.cluster.project_name
            item["clusterName"] = self.cluster.name
        if self.discount_percent:
            item["percentDiscount"] = float(self.discount_percent)
            item["discountCents"] = self.discount_cents
        return item

    def csv_row(self, org: Org) -> list[str]:
        cluster = self.cluster
        return [
            _us_date(self.end),  # the day it was created
            _us_date(self.start),
            self.description,
            self.note,
            org.name,
            org.id,
            cluster.project_name if cluster else "",
            cluster.project_id if cluster else "",
            self.sku,
            cluster.region if cluster else "",
            cluster.name if cluster else "",
            f"atlas-{cluster.id[-6:]}-shard-0" if cluster and self.service == "Clusters" else "",
            "",
            "",
            self.unit,
            _price_text(self.unit_price_micros) if self.unit_price_micros else "",
            _quantity_text(self.quantity_hundredths),
            str(self.discount_percent) if self.discount_percent else "",
            cents_text(self.total_cents),
        ]


class Invoice:
    """One monthly invoice; line items are generated on demand, never stored."""

    def __init__(
        self,
        org: Org,
        start: date,
        *,
        status: str,
        clusters: tuple[Cluster, ...],
        usage_end: date,
        item_limit: int | None = None,
        credit_cents: int = 0,
        starting_balance_cents: int = 0,
        split_payment: bool = False,
        refund: bool = False,
    ) -> None:
        self.org = org
        self.start = start
        self.end = add_months(start, 1)
        self.id = _hex24(org.seed, "invoice", org.id, start.isoformat())
        self.status_name = status
        self.clusters = clusters
        self.usage_end = usage_end  # exclusive: pending invoices stop at today
        self.item_limit = item_limit
        self.credit_cents = credit_cents
        self.starting_balance_cents = starting_balance_cents
        self.split_payment = split_payment
        self.refund = refund

    @property
    def pending(self) -> bool:
        return self.status_name == "PENDING"

    def _usage_days(self) -> list[date]:
        count = (self.usage_end - self.start).days
        return [self.start + timedelta(days=i) for i in range(max(count, 0))]

    def _active_clusters(self) -> tuple[Cluster, ...]:
        return tuple(c for c in self.clusters if c.since is None or c.since <= self.start)

    @property
    def item_count(self) -> int:
        usage = len(self._usage_days()) * len(self._active_clusters()) * len(_KINDS)
        if self.item_limit is not None:
            usage = min(usage, self.item_limit)
        return usage + (1 if self.credit_cents else 0)

    def line_items(self) -> Iterator[LineItem]:
        """Every line, day by day, cluster by cluster; a credit (if any) last."""
        org = self.org
        month_key = self.start.year * 12 + self.start.month
        clusters = self._active_clusters()
        sizes = {c.id: self._size(c, month_key) for c in clusters}
        remaining = self.item_limit
        for day in self._usage_days():
            day_key = day.toordinal() * 0x100000001B3
            end = day + timedelta(days=1)
            for cluster in clusters:
                noise = _mix(cluster.salt ^ day_key)
                for kind_index, kind in enumerate(_KINDS):
                    if remaining is not None:
                        if remaining == 0:
                            return
                        remaining -= 1
                    yield self._item(
                        org, cluster, kind_index, kind, sizes[cluster.id], noise, day, end
                    )
        if self.credit_cents:
            yield LineItem(
                sku=CREDIT_SKU,
                service="Credits",
                description="Credit",
                unit="",
                start=self.start,
                end=self.end,
                cluster=None,
                quantity_hundredths=100,
                unit_price_micros=0,
                discount_percent=0,
                discount_cents=0,
                total_cents=-self.credit_cents,
                note="Credit",
            )

    @staticmethod
    def _size(cluster: Cluster, month_key: int) -> int:
        # Clusters are resized now and then, so months differ and digests have movers.
        step = _mix(cluster.salt ^ (month_key * 0x9E3779B1)) % 3 - 1
        return _SIZES[min(max(cluster.base_size + step, 0), len(_SIZES) - 1)]

    def _item(
        self,
        org: Org,
        cluster: Cluster,
        kind_index: int,
        kind: _Kind,
        size: int,
        noise: int,
        day: date,
        end: date,
    ) -> LineItem:
        jitter = (noise >> (kind_index * 12)) & 0xFFF  # 0..4095, independent per kind
        discount_percent = 0
        if kind is _INSTANCE:
            sku = f"{kind.sku}{size}"
            description = f"{kind.description}{size}"
            hundredths = 24 * _NODES * 100
            micros = _SIZE_PRICE[size]
            discount_percent = org.instance_discount_percent
        elif kind is _STORAGE:
            sku, description = kind.sku, kind.description
            hundredths = cluster.disk_gb * 100 + jitter
            micros = 8_300
        elif kind is _BACKUP:
            sku, description = kind.sku, kind.description
            hundredths = cluster.disk_gb * 60 + jitter * 3
            micros = 2_700
        else:
            sku, description = kind.sku, kind.description
            hundredths = 100 + jitter * 2
            micros = 10_000
        gross = _div_half_even(hundredths * micros, 1_000_000)
        discount = _div_half_even(gross * discount_percent, 100) if discount_percent else 0
        return LineItem(
            sku=sku,
            service=kind.service,
            description=description,
            unit=kind.unit,
            start=day,
            end=end,
            cluster=cluster,
            quantity_hundredths=hundredths,
            unit_price_micros=micros,
            discount_percent=discount_percent,
            discount_cents=discount,
            total_cents=gross - discount,
            note="",
        )

    @cached_property
    def totals(self) -> dict[tuple[str | None, str | None, str], int]:
        """Cents per (project ID, cluster ID, service): what Cost Explorer aggregates."""
        sums: dict[tuple[str | None, str | None, str], int] = defaultdict(int)
        for item in self.line_items():
            cluster = item.cluster
            if cluster is None:
                sums[(None, None, item.service)] += item.total_cents
            else:
                sums[(cluster.project_id, cluster.id, item.service)] += item.total_cents
        return dict(sums)

    @property
    def subtotal_cents(self) -> int:
        """Sum of every line item, credits included: the CSV's Amount column total."""
        return sum(self.totals.values())

    @property
    def credits_cents(self) -> int:
        return self.credit_cents

    @property
    def sales_tax_cents(self) -> int:
        if not self.org.tax_basis_points:
            return 0
        return _div_half_even(max(self.subtotal_cents, 0) * self.org.tax_basis_points, 10_000)

    @property
    def amount_billed_cents(self) -> int:
        return self.subtotal_cents + self.sales_tax_cents

    @property
    def paid(self) -> bool:
        return self.status_name == "PAID"

    @property
    def amount_paid_cents(self) -> int:
        return self.amount_billed_cents - self.starting_balance_cents if self.paid else 0

    def payments(self) -> list[dict[str, Any]]:
        """Payments whose ``amountBilledCents × unitPrice + salesTaxCents`` sum to the billed amount."""
        if self.pending:
            return []
        subtotal, tax = self.subtotal_cents, self.sales_tax_cents
        if self.split_payment:
            first_sub, first_tax = subtotal * 3 // 5, tax * 3 // 5
            shares = [(first_sub, first_tax), (subtotal - first_sub, tax - first_tax)]
        else:
            shares = [(subtotal, tax)]
        to_pay = self.amount_billed_cents - self.starting_balance_cents
        paid_so_far = 0
        created = iso_z(datetime.combine(self.end + timedelta(days=3), datetime.min.time(), UTC))
        payments = []
        for index, (sub, tax_share) in enumerate(shares):
            if self.paid:
                paid = to_pay - paid_so_far if index == len(shares) - 1 else sub + tax_share
                paid_so_far += paid
            else:
                paid = 0
            payments.append(
                {
                    "id": self.payment_id(index),
                    "amountBilledCents": sub,
                    "amountPaidCents": paid,
                    "created": created,
                    "updated": created,
                    "currency": "USD",
                    "salesTaxCents": tax_share,
                    "statusName": "PAID" if self.paid else "NEW",
                    "subtotalCents": sub,
                    "unitPrice": "1.00",
                }
            )
        return payments

    def payment_id(self, index: int) -> str:
        return _hex24(self.org.seed, "payment", self.id, index)

    def refunds(self) -> list[dict[str, Any]]:
        if not self.refund or self.pending:
            return []
        created = datetime.combine(self.end + timedelta(days=9), datetime.min.time(), UTC)
        return [
            {
                "amountCents": 1_500,
                "created": iso_z(created),
                "paymentId": self.payment_id(0),
                "reason": "Billing adjustment: duplicate backup charge",
            }
        ]

    @property
    def created(self) -> str:
        return iso_z(self.start)

    @property
    def updated(self) -> str:
        if self.pending:
            return iso_z(self.org.data.today)
        return iso_z(self.end + timedelta(days=2))

    def metadata(self, base_url: str = "") -> dict[str, Any]:
        """The invoice as the list endpoint shows it (BillingInvoiceMetadata)."""
        return {
            "id": self.id,
            "orgId": self.org.id,
            "statusName": self.status_name,
            "created": self.created,
            "updated": self.updated,
            "startDate": iso_z(self.start),
            "endDate": iso_z(self.end),
            "subtotalCents": self.subtotal_cents,
            "creditsCents": self.credits_cents,
            "salesTaxCents": self.sales_tax_cents,
            "amountBilledCents": self.amount_billed_cents,
            "amountPaidCents": self.amount_paid_cents,
            "startingBalanceCents": self.starting_balance_cents,
            "linkedInvoices": [],
            "links": [
                {
                    "rel": "self",
                    "href": f"{base_url}/api/atlas/v2/orgs/{self.org.id}/invoices/{self.id}",
                }
            ],
        }

    def document(self, base_url: str = "") -> dict[str, Any]:
        """The invoice as getInvoice shows it (BillingInvoice) without ``lineItems``."""
        doc = self.metadata(base_url)
        doc["payments"] = self.payments()
        doc["refunds"] = self.refunds()
        return doc

    def to_json(self, base_url: str = "") -> dict[str, Any]:
        """The whole BillingInvoice, line items included (small invoices only)."""
        doc = self.document(base_url)
        doc["lineItems"] = [item.to_json() for item in self.line_items()]
        return doc

    def csv_chunks(self, rows_per_chunk: int = 2_000) -> Iterator[str]:
        """The invoice CSV, a chunk of rows at a time, so 200,000 rows never sit in memory."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["Invoice Number", self.id, ""])
        writer.writerow(
            ["Billing Period", f"{_long_date(self.start)} - {_long_date(self.end)}", ""]
        )
        writer.writerow(["Organization Name", self.org.name, ""])
        writer.writerow(["Organization ID", self.org.id, ""])
        writer.writerow([])
        writer.writerow(INVOICE_CSV_COLUMNS)
        rows = 0
        for item in self.line_items():
            writer.writerow(item.csv_row(self.org))
            rows += 1
            if rows == rows_per_chunk:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                rows = 0
        yield buffer.getvalue()

    def csv_text(self) -> str:
        return "".join(self.csv_chunks())


class Org:
    """One organisation: projects, clusters and seven invoices (pending + six closed)."""

    def __init__(self, data: SandboxData, index: int, org_id: str, name: str) -> None:
        self.data = data
        self.seed = data.seed
        self.index = index
        self.id = org_id
        self.name = name
        self.huge = name == HUGE_ORG_NAME
        # One org pays US sales tax, another has a negotiated discount on instances.
        self.tax_basis_points = 800 if index == 0 else 0
        self.instance_discount_percent = 10 if index == 2 else 0
        self.projects = self._make_projects()
        self.clusters = tuple(c for p in self.projects for c in p.clusters)
        self._by_cluster = {c.id: c for c in self.clusters}
        self._by_project = {p.id: p for p in self.projects}
        self.pending, self.closed = self._make_invoices()
        self.invoices = (self.pending, *self.closed)
        self._by_invoice = {i.id: i for i in self.invoices}

    def invoice(self, invoice_id: str) -> Invoice | None:
        return self._by_invoice.get(invoice_id)

    def project(self, project_id: str) -> Project | None:
        return self._by_project.get(project_id)

    def cluster(self, cluster_id: str) -> Cluster | None:
        return self._by_cluster.get(cluster_id)

    @property
    def latest_closed(self) -> Invoice:
        return self.closed[0]

    def _make_projects(self) -> tuple[Project, ...]:
        seed, today = self.seed, self.data.today
        if self.huge:
            shape = [(f"Tenant {p:02d}", _HUGE_CLUSTERS_PER_PROJECT) for p in range(_HUGE_PROJECTS)]
        else:
            count = 2 + _number(seed, "projects", self.id) % 3
            names = sorted(_PROJECT_NAMES, key=lambda n: _digest(seed, "project-name", self.id, n))
            shape = [
                (names[p], 1 + _number(seed, "clusters", self.id, p) % 3) for p in range(count)
            ]
        projects = []
        for p, (project_name, cluster_count) in enumerate(shape):
            project_id = _hex24(seed, "project", self.id, p)
            clusters = []
            for c in range(cluster_count):
                number = _number(seed, "cluster", project_id, c)
                if self.huge:
                    name = f"tenant-{p:02d}-{c:02d}"
                else:
                    name = f"{_CLUSTER_WORDS[number % len(_CLUSTER_WORDS)]}-{c + 1}"
                # A few clusters are new (billed for the last three months only): movers.
                # The first cluster is always old, so every month has usage.
                new = not self.huge and (p, c) != (0, 0) and number % 7 == 3
                since = add_months(today, -3) if new else None
                clusters.append(
                    Cluster(
                        id=_hex24(seed, "cluster-id", project_id, c),
                        name=name,
                        project_id=project_id,
                        project_name=project_name,
                        region=_REGIONS[(number >> 8) % len(_REGIONS)],
                        base_size=0 if self.huge else (number >> 16) % 4,
                        disk_gb=20 + (number >> 24) % 480,
                        salt=number,
                        since=since,
                    )
                )
            projects.append(Project(id=project_id, name=project_name, clusters=tuple(clusters)))
        return tuple(projects)

    def _make_invoices(self) -> tuple[Invoice, tuple[Invoice, ...]]:
        seed, today = self.seed, self.data.today
        this_month = first_of_month(today)
        # The huge org bills all 1,800 clusters only in its latest closed month.
        usual = self.projects[0].clusters if self.huge else self.clusters
        pending = Invoice(self, this_month, status="PENDING", clusters=usual, usage_end=today)
        closed = []
        credit_phase = _number(seed, "credits", self.id) % 3
        for back in range(1, CLOSED_MONTHS + 1):
            start = add_months(today, -back)
            huge_month = self.huge and back == 1
            has_credit = not self.huge and (back + credit_phase) % 3 == 0
            closed.append(
                Invoice(
                    self,
                    start,
                    status="CLOSED" if back == 1 else "PAID",
                    clusters=self.clusters if huge_month else usual,
                    usage_end=add_months(start, 1),
                    item_limit=HUGE_LINE_ITEMS if huge_month else None,
                    credit_cents=2_500 + _number(seed, "credit", self.id, back) % 12_500
                    if has_credit
                    else 0,
                    starting_balance_cents=5_000 if self.index == 0 and back == 3 else 0,
                    split_payment=not self.huge and back == 4,
                    refund=self.index == 0 and back == 5,
                )
            )
        return pending, tuple(closed)


class SandboxData:
    """All orgs of one sandbox; an org's projects and invoices are built on first access."""

    def __init__(self, seed: int = 1, today: date | None = None, extra_orgs: int = 0) -> None:
        self.seed = seed
        self.today = today or datetime.now(UTC).date()
        self.credentials = make_credentials(seed)
        names = [*SMALL_ORG_NAMES, HUGE_ORG_NAME]
        names += [f"Extra Org {n:03d}" for n in range(1, extra_orgs + 1)]
        self._names = {_hex24(seed, "org", i): (i, name) for i, name in enumerate(names)}
        self.org_ids: tuple[str, ...] = tuple(self._names)
        self._orgs: dict[str, Org] = {}
        self._lock = threading.Lock()

    def set_today(self, today: date) -> None:
        """Regenerate every org as of ``today`` (its pending month, closed months, usage day).

        Tests move the sandbox to the day they mean; the data is built lazily from
        ``today``, so forgetting the built orgs is all it takes.
        """
        with self._lock:
            self.today = today
            self._orgs.clear()

    @property
    def huge_org_id(self) -> str:
        return self.org_ids[len(SMALL_ORG_NAMES)]

    def org(self, org_id: str) -> Org | None:
        found = self._names.get(org_id)
        if found is None:
            return None
        with self._lock:
            org = self._orgs.get(org_id)
            if org is None:
                org = self._orgs[org_id] = Org(self, found[0], org_id, found[1])
        return org

    def org_name(self, org_id: str) -> str | None:
        found = self._names.get(org_id)
        return found[1] if found else None

    def orgs(self) -> Iterator[Org]:
        for org_id in self.org_ids:
            org = self.org(org_id)
            assert org is not None
            yield org

    def earliest_cost_month(self) -> date:
        """Cost Explorer looks back at most 24 months."""
        return add_months(self.today, -24)

    def latest_cost_end(self) -> date:
        return add_months(self.today, 1)


def cost_rows(
    org: Org,
    start: date,
    end: date,
    *,
    group_by: str | None = None,
    organizations: Iterable[str] = (),
    projects: Iterable[str] = (),
    clusters: Iterable[str] = (),
    services: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Cost Explorer usage rows for one org's invoices with a month in ``[start, end)``.

    Amounts come from the same line items as the invoices, so the rows of a
    month (no filters) add up to that invoice's ``subtotalCents``.
    """
    org_filter, project_filter = set(organizations), set(projects)
    cluster_filter, service_filter = set(clusters), set(services)
    if org_filter and org.id not in org_filter:
        return []
    rows: list[dict[str, Any]] = []
    for invoice in sorted(org.invoices, key=lambda i: i.start):
        if not start <= invoice.start < end:
            continue
        groups: dict[tuple[Any, ...], int] = defaultdict(int)
        for (project_id, cluster_id, service), cents in invoice.totals.items():
            if service_filter and service not in service_filter:
                continue
            if project_filter and project_id not in project_filter:
                continue
            if cluster_filter and cluster_id not in cluster_filter:
                continue
            if group_by == "organizations":
                key: tuple[Any, ...] = ()
            elif group_by == "projects":
                key = (project_id, service)
            elif group_by == "clusters":
                key = (project_id, cluster_id, service)
            else:
                key = (service,)
            groups[key] += cents
        for key, cents in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
            row: dict[str, Any] = {
                "invoiceId": invoice.id,
                "organizationId": org.id,
                "organizationName": org.name,
            }
            if group_by in ("projects", "clusters") and key[0] is not None:
                project = org.project(key[0])
                assert project is not None
                row["projectId"] = project.id
                row["projectName"] = project.name
            if group_by == "clusters" and key[1] is not None:
                cluster = org.cluster(key[1])
                assert cluster is not None
                row["clusterName"] = cluster.name
                row["clusterId"] = cluster.id
            if group_by != "organizations":
                row["service"] = key[-1]
            row["usageAmount"] = cents_to_float(cents)
            row["usageDate"] = invoice.start.isoformat()
            rows.append(row)
    return rows


def cost_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The CSV form of a Cost Explorer result (the columns ATLAS-NOTES.md lists)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COST_CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row["usageDate"],
                row["invoiceId"],
                row["organizationName"],
                row["organizationId"],
                row.get("projectName", ""),
                row.get("projectId", ""),
                row.get("clusterName", ""),
                row.get("clusterId", ""),
                f"{row['usageAmount']:.2f}",
            ]
        )
    return buffer.getvalue()
