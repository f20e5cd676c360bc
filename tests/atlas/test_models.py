"""Typed billing models: exact money, the owed formula, Cost Explorer sums."""

import json
from decimal import Decimal

from bot.atlas import CostResult, CostRow, Invoice


def _invoice(**fields):
    base = {"id": "a" * 24, "orgId": "b" * 24}
    base.update(fields)
    return Invoice.model_validate(json.loads(json.dumps(base), parse_float=Decimal))


def test_owed_single_payment_is_the_documented_formula():
    # amountBilledCents × unitPrice + salesTax − startingBalance
    inv = _invoice(
        startingBalanceCents=5000,
        payments=[{"amountBilledCents": 100000, "unitPrice": "1.00", "salesTaxCents": 8000}],
    )
    assert inv.owed_cents == 100000 + 8000 - 5000


def test_owed_sums_payments_and_subtracts_the_starting_balance_once():
    inv = _invoice(
        startingBalanceCents=1000,
        payments=[
            {"amountBilledCents": 60000, "unitPrice": "1", "salesTaxCents": 4800},
            {"amountBilledCents": 40000, "unitPrice": "1", "salesTaxCents": 3200},
        ],
    )
    assert inv.owed_cents == (60000 + 4800) + (40000 + 3200) - 1000


def test_owed_with_a_conversion_unit_price_rounds_half_even_at_the_cent():
    inv = _invoice(
        payments=[{"amountBilledCents": 12345, "unitPrice": "0.925", "salesTaxCents": 0}]
    )
    # 12345 × 0.925 = 11419.125 cents → 11419 (half-even)
    assert inv.owed_cents == 11419


def test_owed_without_payments_is_billed_less_balance():
    inv = _invoice(amountBilledCents=70000, startingBalanceCents=2500)
    assert inv.owed_cents == 67500


def test_usage_and_breakdowns_use_integer_cents():
    inv = _invoice(
        lineItems=[
            {"sku": "A", "groupName": "prod", "clusterName": "c0", "totalPriceCents": 1001},
            {"sku": "B", "groupName": "prod", "totalPriceCents": 2002},
            {"sku": "A", "groupId": "c" * 24, "totalPriceCents": 5},
            {"sku": "CREDIT", "totalPriceCents": -500},
        ],
        unknownFutureField={"x": 1},
    )
    assert inv.usage_cents == 2508
    assert inv.cents_by("sku") == {"A": 1006, "B": 2002, "CREDIT": -500}
    assert inv.cents_by("project") == {"prod": 3003, "c" * 24: 5, "(no project)": -500}
    assert inv.cents_by("cluster") == {"c0": 1001, "(no cluster)": 1507}


def test_cost_rows_sum_exactly_in_decimal():
    rows = [
        {"service": "Clusters", "usageAmount": Decimal("0.10"), "usageDate": "2024-09-01"},
        {"service": "Clusters", "usageAmount": Decimal("0.20"), "usageDate": "2024-09-01"},
        {"service": "Backup", "usageAmount": Decimal("51.19"), "usageDate": "2024-10-01"},
        {"service": "Backup", "groupName": "p", "usageAmount": 3, "usageDate": "2024-10-01"},
    ]
    result = CostResult(rows=tuple(CostRow.model_validate(r) for r in rows))
    assert result.total_cents == 5449
    assert result.cents_by("services") == {"Clusters": 30, "Backup": 5419}
    assert result.cents_by("months") == {"2024-09": 30, "2024-10": 5419}
    assert result.cents_by("projects") == {"(no project)": 5149, "p": 300}
    assert CostResult().total_cents == 0
