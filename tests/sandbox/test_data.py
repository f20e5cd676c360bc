"""The sandbox dataset: deterministic, internally consistent, and cheap to build."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from bot.atlas import SERVICES
from bot.core.months import add_months
from bot.sandbox.data import (
    CLOSED_MONTHS,
    COST_CSV_COLUMNS,
    HUGE_LINE_ITEMS,
    INVOICE_CSV_COLUMNS,
    Org,
    SandboxData,
    cost_csv,
    cost_rows,
)

TODAY = date(2025, 3, 15)
HEX24 = re.compile(r"[a-f0-9]{24}")


@pytest.fixture(scope="module")
def data() -> SandboxData:
    return SandboxData(seed=1, today=TODAY)


def known_org(data: SandboxData, org_id: str) -> Org:
    """`data.org(org_id)` for an id the dataset holds."""
    org = data.org(org_id)
    assert org is not None
    return org


def small_orgs(data: SandboxData):
    return [org for org in data.orgs() if not org.huge]


def csv_table(text: str) -> tuple[list[list[str]], list[dict[str, str]]]:
    rows = list(csv.reader(io.StringIO(text), strict=True))
    blank = rows.index([])
    head, table = rows[:blank], rows[blank + 1 :]
    return head, [dict(zip(table[0], r, strict=True)) for r in table[1:]]


def cents(text: str) -> int:
    return int(Decimal(text) * 100)


def fingerprint(data: SandboxData) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for org in small_orgs(data):
        for invoice in org.invoices:
            out.append((org.id, invoice.id, str(invoice.subtotal_cents), invoice.payment_id(0)))
        out.extend((p.id, p.name) for p in org.projects)
        out.extend((c.id, c.name) for c in org.clusters)
    return out


def test_same_seed_gives_same_ids_and_amounts(data: SandboxData) -> None:
    again = SandboxData(seed=1, today=TODAY)
    assert again.org_ids == data.org_ids
    assert again.credentials == data.credentials
    assert fingerprint(again) == fingerprint(data)
    assert csv_table(known_org(again, again.org_ids[0]).closed[2].csv_text()) == csv_table(
        known_org(data, data.org_ids[0]).closed[2].csv_text()
    )


def test_another_seed_gives_other_ids_and_amounts(data: SandboxData) -> None:
    other = SandboxData(seed=2, today=TODAY)
    assert set(other.org_ids).isdisjoint(data.org_ids)
    assert other.credentials.client_id != data.credentials.client_id
    amounts = {f[2] for f in fingerprint(data) if len(f) == 4}
    other_amounts = {f[2] for f in fingerprint(other) if len(f) == 4}
    assert amounts != other_amounts


def test_orgs_names_and_ids(data: SandboxData) -> None:
    names = [data.org_name(org_id) for org_id in data.org_ids]
    assert names == ["Acme Production", "Acme Staging", "Globex", "Initech Huge"]
    assert known_org(data, data.huge_org_id).huge
    assert data.org("0" * 24) is None
    for org in small_orgs(data):
        assert HEX24.fullmatch(org.id)
        assert 2 <= len(org.projects) <= 4
        for project in org.projects:
            assert HEX24.fullmatch(project.id)
            assert 1 <= len(project.clusters) <= 3
            for cluster in project.clusters:
                assert HEX24.fullmatch(cluster.id)
                assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9-]*", cluster.name)


def test_credentials_have_the_documented_forms(data: SandboxData) -> None:
    creds = data.credentials
    assert re.fullmatch(r"mdb_sa_id_[a-f0-9]{24}", creds.client_id)
    assert re.fullmatch(r"mdb_sa_sk_[a-z0-9]{40}", creds.client_secret)
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    for public, private in (
        (creds.public_key, creds.private_key),
        (creds.no_role_public_key, creds.no_role_private_key),
    ):
        assert re.fullmatch(r"[a-z]{8}", public)
        assert re.fullmatch(uuid, private)
    assert creds.public_key != creds.no_role_public_key


def test_each_org_has_a_pending_and_six_closed_invoices(data: SandboxData) -> None:
    for org in data.orgs():
        assert org.pending.status_name == "PENDING"
        assert org.pending.start == date(2025, 3, 1)
        assert org.pending.end == date(2025, 4, 1)
        assert [i.start for i in org.closed] == [
            add_months(TODAY, -n) for n in range(1, CLOSED_MONTHS + 1)
        ]
        assert [i.status_name for i in org.closed] == ["CLOSED"] + ["PAID"] * 5
        assert len({i.id for i in org.invoices}) == 7
        assert all(HEX24.fullmatch(i.id) for i in org.invoices)
        assert org.invoice(org.closed[3].id) is org.closed[3]


def test_pending_items_stop_yesterday(data: SandboxData) -> None:
    for org in small_orgs(data):
        days = {item.start for item in org.pending.line_items()}
        assert max(days) == TODAY - timedelta(days=1)
        assert min(days) == date(2025, 3, 1)
        assert org.pending.payments() == []
    first = SandboxData(seed=1, today=date(2025, 3, 1))
    assert list(known_org(first, first.org_ids[0]).pending.line_items()) == []


def test_invoice_amounts_add_up(data: SandboxData) -> None:
    for org in small_orgs(data):
        for invoice in org.invoices:
            items = list(invoice.line_items())
            assert invoice.item_count == len(items)
            assert invoice.subtotal_cents == sum(i.total_cents for i in items)
            credits = [i for i in items if i.sku == "CREDIT"]
            assert invoice.credits_cents == -sum(i.total_cents for i in credits)
            assert all(i.total_cents < 0 and i.description == "Credit" for i in credits)
            rate = Decimal("0.08") if org.index == 0 else Decimal(0)
            tax = int((invoice.subtotal_cents * rate).quantize(Decimal(1), ROUND_HALF_EVEN))
            assert invoice.sales_tax_cents == tax
            assert invoice.amount_billed_cents == invoice.subtotal_cents + tax
            owed = sum(
                Decimal(p["amountBilledCents"]) * Decimal(p["unitPrice"]) + p["salesTaxCents"]
                for p in invoice.payments()
            )
            if invoice.payments():
                assert owed - invoice.starting_balance_cents == (
                    invoice.amount_billed_cents - invoice.starting_balance_cents
                )
            if invoice.status_name == "PAID":
                paid = invoice.amount_billed_cents - invoice.starting_balance_cents
                assert invoice.amount_paid_cents == paid
                assert sum(p["amountPaidCents"] for p in invoice.payments()) == paid
            else:
                assert invoice.amount_paid_cents == 0


def test_the_special_cases_exist(data: SandboxData) -> None:
    invoices = [i for org in small_orgs(data) for i in org.closed]
    assert any(i.credits_cents > 0 for i in invoices)
    assert any(i.credits_cents == 0 for i in invoices)
    assert [i.starting_balance_cents for i in invoices if i.starting_balance_cents] == [5000]
    assert any(len(i.payments()) == 2 for i in invoices)
    refunded = [i for i in invoices if i.refunds()]
    assert len(refunded) == 1
    refund = refunded[0].refunds()[0]
    assert refund["paymentId"] == refunded[0].payments()[0]["id"]
    assert any(item.discount_percent for i in invoices for item in i.line_items())


def test_amounts_change_from_month_to_month(data: SandboxData) -> None:
    for org in small_orgs(data):
        closed = [i.subtotal_cents for i in org.closed]
        assert len(set(closed)) == len(closed)
        by_project = [
            {key[0]: cents for key, cents in i.totals.items() if key[0]} for i in org.closed
        ]
        assert by_project[0] != by_project[1]


def test_line_items_carry_the_schema_fields(data: SandboxData) -> None:
    org = data.org(data.org_ids[0])
    assert org is not None
    item = next(org.closed[0].line_items()).to_json()
    assert item["sku"].startswith("ATLAS_AWS_INSTANCE_M")
    assert HEX24.fullmatch(item["groupId"])
    for name in ("groupName", "clusterName", "startDate", "endDate", "quantity", "unit"):
        assert name in item
    assert isinstance(item["totalPriceCents"], int)
    skus = {i.sku.rsplit("_M", 1)[0] for i in org.closed[0].line_items()}
    assert {
        "ATLAS_AWS_INSTANCE",
        "ATLAS_AWS_STORAGE_PROVISIONED",
        "ATLAS_AWS_BACKUP_SNAPSHOT_STORAGE",
        "ATLAS_AWS_DATA_TRANSFER_SAME_REGION",
    } <= skus


def test_invoice_csv_format_and_sum(data: SandboxData) -> None:
    for org in small_orgs(data):
        for invoice in org.invoices:
            text = invoice.csv_text()
            lines = text.split("\n")
            assert lines[0] == f"Invoice Number,{invoice.id},"
            assert lines[2] == f"Organization Name,{org.name},"
            assert lines[3] == f"Organization ID,{org.id},"
            assert lines[4] == ""
            head, rows = csv_table(text)
            assert head[1][0] == "Billing Period"
            assert tuple(csv.reader([lines[5]]).__next__()) == INVOICE_CSV_COLUMNS
            assert len(rows) == invoice.item_count
            assert sum(cents(r["Amount"]) for r in rows) == invoice.subtotal_cents
            for row in rows:
                assert re.fullmatch(r"-?\d+\.\d\d", row["Amount"])
                assert re.fullmatch(r"\d\d/\d\d/\d{4}", row["Usage Date"])
    billing_period = csv_table(known_org(data, data.org_ids[0]).closed[0].csv_text())[0][1][1]
    assert billing_period == "February 1, 2025 - March 1, 2025"


def test_cost_rows_match_the_invoices(data: SandboxData) -> None:
    start, end = add_months(TODAY, -CLOSED_MONTHS), add_months(TODAY, 1)
    for org in small_orgs(data):
        subtotals = {i.start.isoformat(): i.subtotal_cents for i in org.invoices}
        for group_by in (None, "services", "projects", "clusters", "organizations"):
            rows = cost_rows(org, start, end, group_by=group_by)
            per_month: dict[str, int] = defaultdict(int)
            for row in rows:
                per_month[row["usageDate"]] += round(Decimal(str(row["usageAmount"])) * 100)
                assert row["organizationId"] == org.id
                assert row["invoiceId"] == org.invoice(row["invoiceId"]).id
            assert per_month == {m: c for m, c in subtotals.items() if c}, group_by
        services = {r["service"] for r in cost_rows(org, start, end)}
        assert services <= set(SERVICES)
        assert {"Clusters", "Storage", "Backup", "Data Transfer"} <= services
        by_cluster = cost_rows(org, start, end, group_by="clusters")
        assert all("clusterId" in r for r in by_cluster if r["service"] != "Credits")
        assert "service" not in cost_rows(org, start, end, group_by="organizations")[0]


def test_cost_rows_filters(data: SandboxData) -> None:
    org = data.org(data.org_ids[1])
    assert org is not None
    start, end = add_months(TODAY, -3), add_months(TODAY, -1)
    project = org.projects[0]
    rows = cost_rows(org, start, end, group_by="projects", projects=[project.id])
    assert rows and {r["projectId"] for r in rows} == {project.id}
    assert {r["usageDate"] for r in rows} == {"2024-12-01", "2025-01-01"}
    cluster = org.clusters[-1]
    rows = cost_rows(org, start, end, group_by="clusters", clusters=[cluster.id])
    assert rows and {r["clusterId"] for r in rows} == {cluster.id}
    rows = cost_rows(org, start, end, services=["Backup"])
    assert {r["service"] for r in rows} == {"Backup"}
    assert cost_rows(org, start, end, organizations=[data.org_ids[0]]) == []
    assert cost_rows(org, start, end, organizations=[org.id])


def test_cost_csv_has_the_documented_columns(data: SandboxData) -> None:
    org = data.org(data.org_ids[0])
    assert org is not None
    rows = cost_rows(org, add_months(TODAY, -2), TODAY, group_by="clusters")
    table = list(csv.reader(io.StringIO(cost_csv(rows))))
    assert tuple(table[0]) == COST_CSV_COLUMNS
    assert len(table) == len(rows) + 1
    assert table[1][-1] == f"{rows[0]['usageAmount']:.2f}"


def test_huge_org_latest_closed_invoice_has_200000_items(data: SandboxData) -> None:
    huge = data.org(data.huge_org_id)
    assert huge is not None
    invoice = huge.latest_closed
    assert invoice.item_count == HUGE_LINE_ITEMS
    assert sum(1 for _ in invoice.line_items()) == HUGE_LINE_ITEMS
    # The other months stay small, so the pending endpoint does not need to stream megabytes.
    assert all(i.item_count < 5_000 for i in huge.invoices if i is not invoice)


def test_extra_orgs_are_cheap_and_lazy() -> None:
    many = SandboxData(seed=3, today=TODAY, extra_orgs=500)
    assert len(many.org_ids) == 504
    assert len(set(many.org_ids)) == 504
    last = many.org(many.org_ids[-1])
    assert last is not None
    assert last.name == "Extra Org 500"
    assert many.org(many.org_ids[-1]) is last
    assert last.pending.status_name == "PENDING"
