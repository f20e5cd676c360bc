"""The command line's plain text: the invoice summary, month-to-date spend, Cost Explorer totals."""

from __future__ import annotations

from datetime import date

from bot.render.text import costs_text, invoice_text, pending_text
from bot.services.spend import CostSummary, InvoiceSummary, PendingSummary

ORG = "5f0c0ffee0ddba11deadbeef"


def _invoice(**overrides) -> InvoiceSummary:
    values = {
        "org_id": ORG,
        "invoice_id": "66aa00bb11cc22dd33ee44ff",
        "status": "PENDING",
        "start": date(2027, 3, 1),
        "end": date(2027, 4, 1),
        "usage_cents": 1_234_567,
        "credits_cents": -10_000,
        "tax_cents": 98_765,
        "billed_cents": 1_323_332,
        "owed_cents": 1_323_332,
        "line_items": 200_000,
        "by_project": tuple((f"project-{n}", 100_000 - n) for n in range(8)),
        "by_sku": (("ATLAS_AWS_INSTANCE_M10", 900_000),),
        "by_cluster": (),
    }
    return InvoiceSummary(**{**values, **overrides})


def test_the_invoice_shows_every_amount_aligned_and_the_top_projects_with_the_rest():
    text = invoice_text(_invoice(), top=5)
    lines = text.splitlines()
    assert lines[1] == f"Organization {ORG}, 200,000 line items"
    amounts = lines[2:7]
    assert [line.split()[0] for line in amounts] == ["Usage", "Credits", "Sales", "Billed", "Owed"]
    assert len({len(line) for line in amounts}) == 1  # right-aligned in one column
    assert "$12,345.67" in amounts[0] and "-$100.00" in amounts[1]
    # The three projects past the top five, summed exactly: 99,995 + 99,994 + 99,993 cents.
    assert "  … and 3 more ($2,999.82)" in lines
    assert "Top SKUs:" in lines and not any("Top clusters" in line for line in lines)


def test_an_org_without_a_pending_invoice_says_so():
    assert pending_text(PendingSummary(ORG, ())) == f"Organization {ORG} has no pending invoice."


def test_month_to_date_is_the_sum_of_the_pending_invoices():
    two = PendingSummary(ORG, (_invoice(), _invoice(invoice_id="77aa00bb11cc22dd33ee44ff")))
    first_line = pending_text(two).splitlines()[0]
    assert first_line == f"Month-to-date spend of organization {ORG}: $24,691.34"


def test_cost_explorer_shows_up_to_24_months_and_the_top_groups():
    months = tuple((f"20{25 + n // 12}-{n % 12 + 1:02d}", 1_000) for n in range(26))
    summary = CostSummary("projects", 26_000, 52, (("web", 20_000), ("batch", 6_000)), months)
    lines = costs_text(summary).splitlines()
    assert lines[0] == "Cost Explorer total: $260.00 (52 rows)"
    assert "  … and 2 more ($20.00)" in lines  # months 25 and 26
    assert lines[lines.index("By projects:") + 1].split()[0] == "web"
