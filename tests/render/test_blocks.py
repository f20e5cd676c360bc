"""Block Kit rendering: pure functions checked with plain asserts on the blocks."""

import json
from datetime import date
from typing import TypedDict, Unpack

from bot.render.blocks import (
    MAX_BLOCKS,
    costs_result_message,
    invoice_message,
    pending_message,
    ranked,
)
from bot.render.terminal import blocks_to_text, mrkdwn_to_text
from bot.services.spend import CostSummary, InvoiceSummary, PendingSummary


class _InvoiceFields(TypedDict, total=False):
    """The fields of `InvoiceSummary`."""

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


def _invoice(**overrides: Unpack[_InvoiceFields]) -> InvoiceSummary:
    values: _InvoiceFields = {
        "org_id": "a" * 24,
        "invoice_id": "b" * 24,
        "status": "PENDING",
        "start": date(2026, 11, 1),
        "end": date(2026, 12, 1),
        "usage_cents": 123456,
        "credits_cents": 1000,
        "tax_cents": 9876,
        "billed_cents": 133332,
        "owed_cents": 133332,
        "line_items": 12,
        "by_project": tuple((f"project-{i}", 1000 - i) for i in range(8)),
        "by_sku": (("SKU_A", 100000), ("SKU_<script>", 23456)),
        "by_cluster": (),
    }
    values.update(overrides)
    return InvoiceSummary(**values)


def test_ranked_folds_the_tail_into_and_n_more():
    text = ranked(tuple((f"p{i}", 100) for i in range(8)), limit=5)
    lines = text.splitlines()
    assert len(lines) == 6
    assert lines[-1] == "… and 3 more ($3.00)"
    assert ranked(()) == "_none_"


def test_names_are_escaped_for_mrkdwn():
    assert "SKU_&lt;script&gt;" in ranked((("SKU_<script>", 1),))


def test_pending_message_shows_total_period_and_top_lists():
    summary = PendingSummary(org_id="a" * 24, invoices=(_invoice(),))
    message = pending_message([summary])
    blob = json.dumps(message.blocks, ensure_ascii=False)
    assert message.text == "Month-to-date Atlas spend: $1,234.56"
    assert "*$1,234.56* so far (Nov 1, 2026 – Dec 1, 2026)" in blob
    assert "… and 3 more" in blob
    assert "$1,333.32" in blob  # billed incl. tax


def test_pending_message_for_an_org_without_invoice():
    message = pending_message([PendingSummary(org_id="c" * 24, invoices=())])
    assert "no pending invoice" in json.dumps(message.blocks)


def test_invoice_message_lists_every_amount():
    blob = json.dumps(invoice_message(_invoice(), csv_rows=12).blocks)
    for label, amount in [
        ("Usage subtotal", "$1,234.56"),
        ("Credits", "$10.00"),
        ("Sales tax", "$98.76"),
        ("Billed", "$1,333.32"),
        ("Owed", "$1,333.32"),
    ]:
        assert label in blob and amount in blob
    assert "12 line items" in blob


def test_cost_result_message_and_block_limit():
    summary = CostSummary(
        group_by="projects",
        total_cents=-1200,
        rows=3,
        by_group=(("a", 100), ("b", -1300)),
        by_month=(("2026-10", -1200),),
    )
    message = costs_result_message("a" * 24, date(2026, 10, 1), date(2026, 11, 1), summary, "U1")
    blob = json.dumps(message.blocks)
    assert "-$12.00" in blob and "*By projects*" in blob and "<@U1>" in blob
    many = pending_message([PendingSummary(org_id=f"{i:024x}", invoices=()) for i in range(80)])
    assert len(many.blocks) == MAX_BLOCKS
    assert "more blocks" in json.dumps(many.blocks[-1])


def test_terminal_rendering_of_blocks_and_mentions():
    summary = PendingSummary(org_id="a" * 24, invoices=(_invoice(),))
    text = blocks_to_text(pending_message([summary]).blocks)
    assert text.splitlines()[0] == "Month-to-date Atlas spend"
    assert "SKU_<script>" in text  # unescaped for the terminal
    assert (
        mrkdwn_to_text("hi <@U123|ana> and <!subteam^S9|@oncall> <#C1>")
        == "hi @ana and @oncall #C1"
    )
    assert blocks_to_text([], "plain &amp; simple") == "plain & simple"
