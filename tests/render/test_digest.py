"""The monthly digest: exact totals and movers from Cost Explorer rows, and its Block Kit."""

import json
from datetime import date
from decimal import Decimal

from bot.atlas import CostResult, CostRow
from bot.render.blocks import MAX_BLOCKS, SECTION_TEXT_LIMIT
from bot.render.digests import (
    FIELD_TEXT_LIMIT,
    DigestSummary,
    Mover,
    digest_message,
    summarise_digest,
)
from bot.render.terminal import blocks_to_text

ORG = "5f0c0c0c0c0c0c0c0c0c0c0c"
OCT = date(2026, 10, 1)
SEP = date(2026, 9, 1)


def _row(month: date, amount: str, service: str | None = "Clusters", **extra) -> CostRow:
    data = {
        "usageDate": month.isoformat(),
        "usageAmount": Decimal(amount),
        "organizationId": ORG,
        "organizationName": "Acme",
        **extra,
    }
    if service is not None:
        data["service"] = service
    return CostRow.model_validate(data)


def _summarise(*rows: CostRow, **kwargs) -> DigestSummary:
    return summarise_digest(CostResult(rows=rows), org_id=ORG, month=OCT, **kwargs)


def _blob(message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


def test_totals_and_change_against_the_month_before():
    summary = _summarise(
        _row(OCT, "1000.00"),
        _row(OCT, "234.00", "Backup"),
        _row(SEP, "1134.00"),
        _row(date(2026, 8, 1), "5.00"),
    )
    assert summary.org_name == "Acme"
    assert (summary.month, summary.previous_month) == (OCT, SEP)
    assert (summary.total_cents, summary.previous_cents) == (123400, 113400)
    assert summary.change_cents == 10000
    assert summary.change_percent == Decimal("8.8")
    assert summary.daily_or_monthly == (
        ("2026-08", 500),
        ("2026-09", 113400),
        ("2026-10", 123400),
    )


def test_money_is_summed_exactly_and_rounded_once():
    # 0.1 + 0.2 is 0.30000000000000004 in floats; three 0.005s round once to 0.02 (half-even).
    summary = _summarise(
        _row(OCT, "0.10"),
        _row(OCT, "0.20"),
        _row(SEP, "0.005"),
        _row(SEP, "0.005"),
        _row(SEP, "0.005"),
    )
    assert summary.total_cents == 30
    assert summary.previous_cents == 2  # rounded per row it would be 0 + 0 + 0


def test_credits_are_negative_rows_and_percent_is_against_the_size_of_the_month_before():
    summary = _summarise(
        _row(OCT, "100.00"),
        _row(OCT, "-150.00", "Credits"),
        _row(SEP, "-100.00", "Credits"),
    )
    assert summary.total_cents == -5000
    assert summary.previous_cents == -10000
    assert summary.change_cents == 5000
    assert summary.change_percent == Decimal("50.0")
    credits = next(m for m in summary.services if m.name == "Credits")
    assert (credits.cents, credits.previous_cents, credits.change_cents) == (-15000, -10000, -5000)
    assert "-$50.00" in _blob(digest_message(summary))


def test_nothing_the_month_before_is_new_spend():
    summary = _summarise(_row(OCT, "12.00"))
    assert summary.previous_cents == 0
    assert summary.change_percent is None
    assert summary.daily_or_monthly == (("2026-09", 0), ("2026-10", 1200))
    message = digest_message(summary)
    assert (
        message.text
        == "Atlas spend for October 2026 (Acme): $12.00 (new spend; nothing in September)"
    )
    assert "*$12.00* (new spend)" in _blob(message)
    assert "• Clusters — $12.00 (new spend)" in _blob(message)


def test_a_service_present_in_one_month_only():
    summary = _summarise(
        _row(OCT, "10.00", "Clusters"),
        _row(OCT, "5.00", "Atlas Search"),
        _row(SEP, "10.00", "Clusters"),
        _row(SEP, "7.50", "Backup"),
    )
    movers = {m.name: m for m in summary.services}
    assert movers["Atlas Search"] == Mover("Atlas Search", 500, 0)
    assert movers["Atlas Search"].change_percent is None
    assert movers["Backup"] == Mover("Backup", 0, 750)
    assert movers["Backup"].change_percent == Decimal("-100.0")
    assert movers["Clusters"].change_cents == 0
    blob = _blob(digest_message(summary))
    assert "• Backup — $0.00 (▼ $7.50, -100.0%)" in blob
    assert "• Clusters — $10.00 (no change)" in blob


def test_mover_percent_rounds_half_even_to_one_decimal():
    assert Mover("a", 1000 + 1, 1000).change_percent == Decimal("0.1")
    assert Mover("a", 20001, 80000).change_percent == Decimal("-75.0")  # -74.99875
    assert Mover("a", 401, 400).change_percent == Decimal("0.2")  # 0.25: to the even tenth
    assert Mover("a", 2007, 2000).change_percent == Decimal("0.4")  # 0.35
    assert Mover("a", 100001, 40000).change_percent == Decimal("150.0")  # 150.0025
    assert Mover("a", 100, 0).change_percent is None


def test_top_five_by_amount_then_name():
    rows = [_row(OCT, "10.00", name) for name in ("Delta", "Alpha", "Echo", "Charlie", "Bravo")]
    rows += [_row(OCT, "99.00", "Zulu"), _row(OCT, "1.00", "Tiny"), _row(SEP, "500.00", "Gone")]
    summary = _summarise(*rows)
    assert [m.name for m in summary.services] == ["Zulu", "Alpha", "Bravo", "Charlie", "Delta"]
    assert summary.total_cents == 15000


def test_projects_from_a_query_grouped_by_projects():
    summary = _summarise(
        _row(OCT, "30.00", "Clusters", projectName="web", projectId="a" * 24),
        _row(OCT, "20.00", "Backup", projectName="web", projectId="a" * 24),
        _row(OCT, "40.00", "Clusters", projectId="b" * 24),
        _row(SEP, "10.00", "Clusters", projectName="web", projectId="a" * 24),
    )
    assert summary.projects == (Mover("web", 5000, 1000), Mover("b" * 24, 4000, 0))
    assert [m.name for m in summary.services] == ["Clusters", "Backup"]
    blob = _blob(digest_message(summary))
    assert "*Top projects*\\n• web — $50.00 (▲ $40.00, +400.0%)" in blob


def test_a_query_grouped_by_services_has_no_projects():
    summary = _summarise(_row(OCT, "1.00"), _row(SEP, "2.00", "Backup"))
    assert summary.projects == ()
    assert len(summary.services) == 2
    blob = _blob(digest_message(summary))
    assert "Top services" in blob
    assert "Top projects" not in blob


def test_org_name_only_from_this_orgs_rows_and_rows_without_date_count_nowhere():
    rows = (
        CostRow.model_validate(
            {
                "usageDate": "2026-10-01",
                "usageAmount": "1",
                "organizationId": "f" * 24,
                "organizationName": "Linked Org",
            }
        ),
        CostRow.model_validate({"usageAmount": "1000"}),
    )
    summary = summarise_digest(CostResult(rows=rows), org_id=ORG, month=date(2026, 10, 17))
    assert summary.org_name is None
    assert summary.month == OCT
    assert summary.total_cents == 100
    assert summary.services == ()
    message = digest_message(summary)
    assert f"Org `{ORG}`" in _blob(message)
    assert message.text.startswith(f"Atlas spend for October 2026 ({ORG}): $1.00")


def test_january_compares_with_december_of_the_year_before():
    summary = summarise_digest(
        CostResult(rows=(_row(date(2026, 1, 1), "2.00"), _row(date(2025, 12, 1), "4.00"))),
        org_id=ORG,
        month=date(2026, 1, 1),
    )
    assert summary.previous_month == date(2025, 12, 1)
    assert summary.change_percent == Decimal("-50.0")
    assert "vs $4.00 in December 2025" in _blob(digest_message(summary))


def test_message_header_total_text_and_month_to_date():
    summary = _summarise(_row(OCT, "12345.67"), _row(SEP, "11345.67"), month_to_date_cents=4_200_00)
    message = digest_message(summary)
    assert message.blocks[0]["type"] == "header"
    assert message.blocks[0]["text"]["text"] == "Atlas spend for October 2026"
    assert message.text == "Atlas spend for October 2026 (Acme): $12,345.67 (▲ 8.8% vs September)"
    blob = _blob(message)
    assert "*Acme* (`5f0c0c0c0c0c0c0c0c0c0c0c`)" in blob
    assert "Total: *$12,345.67* (▲ $1,000.00, +8.8%) vs $11,345.67 in September 2026" in blob
    assert "November 2026 so far: $4,200.00" in blob
    assert not any(b["type"] == "image" for b in message.blocks)
    assert "so far" not in _blob(digest_message(_summarise(_row(OCT, "1.00"))))


def test_decrease_and_no_change_in_the_notification_text():
    down = digest_message(_summarise(_row(OCT, "90.00"), _row(SEP, "100.00")))
    assert down.text.endswith("$90.00 (▼ 10.0% vs September)")
    assert "(▼ $10.00, -10.0%)" in _blob(down)
    same = digest_message(_summarise(_row(OCT, "100.00"), _row(SEP, "100.00")))
    assert same.text.endswith("$100.00 (no change vs September)")
    assert "*$100.00* (no change)" in _blob(same)


def test_chart_image_block_when_a_file_id_is_given():
    summary = _summarise(_row(OCT, "3.00"), _row(SEP, "1.00"))
    image = digest_message(summary, chart_file_id="F0123ABC").blocks[-1]
    assert image["type"] == "image"
    assert image["slack_file"] == {"id": "F0123ABC"}
    assert "image_url" not in image
    assert image["alt_text"].startswith("Bar chart of monthly Atlas spend for Acme")
    assert "2026-10 $3.00" in image["alt_text"]
    assert "[image: Bar chart" in blocks_to_text(digest_message(summary, chart_file_id="F1").blocks)


def test_names_are_escaped():
    summary = _summarise(
        CostRow.model_validate(
            {
                "usageDate": "2026-10-01",
                "usageAmount": "1",
                "service": "<!channel>",
                "organizationName": "A & B <x>",
                "projectName": "p<@U1>",
            }
        )
    )
    message = digest_message(summary)
    blob = _blob(message)
    assert "<!channel>" not in blob and "&lt;!channel&gt;" in blob
    assert "p&lt;@U1&gt;" in blob
    assert "*A &amp; B &lt;x&gt;*" in blob
    assert "(A &amp; B &lt;x&gt;)" in message.text


def test_long_names_stay_within_slack_limits():
    long = "n" * 3000
    summary = _summarise(
        *[_row(OCT, "1.00", f"{long}{i}", projectName=f"{long}{i}") for i in range(8)],
    )
    summary = DigestSummary(**{**summary.__dict__, "org_name": "o" * 5000})
    message = digest_message(summary, chart_file_id="F1")
    assert len(message.blocks) <= MAX_BLOCKS
    for block in message.blocks:
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= SECTION_TEXT_LIMIT
            for field in block.get("fields", []):
                assert len(field["text"]) <= FIELD_TEXT_LIMIT
        if block["type"] == "image":
            assert len(block["alt_text"]) <= 2000
