"""The one money formatter and parser."""

from decimal import Decimal

import pytest

from bot.core.money import cents_to_dollars, dollars_to_cents, format_cents, parse_dollars


@pytest.mark.parametrize(
    ("cents", "text"),
    [
        (0, "$0.00"),
        (5, "$0.05"),
        (1234567, "$12,345.67"),
        (-1200, "-$12.00"),
        (100000000000, "$1,000,000,000.00"),
        (-1, "-$0.01"),
    ],
)
def test_format_cents(cents, text):
    assert format_cents(cents) == text


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("5000", 500000),
        ("$5,000", 500000),
        ("5000.50", 500050),
        ("5000.5", 500050),
        (" $1,234,567.89 ", 123456789),
        ("-12", -1200),
        ("-$12.00", -1200),
        ("(12.00)", -1200),
        ("0.01", 1),
    ],
)
def test_parse_dollars(text, cents):
    assert parse_dollars(text) == cents


@pytest.mark.parametrize(
    "text", ["", "abc", "5,00", "1,2345", "12.345", "1.2.3", "$", "٥٠٠", "5e3", "12,34.00", "--5"]
)
def test_parse_dollars_rejects(text):
    with pytest.raises(ValueError, match=r"amount|decimals"):
        parse_dollars(text)


def test_dollars_to_cents_is_exact_and_rounds_half_even():
    assert dollars_to_cents(Decimal("51.19")) == 5119
    assert dollars_to_cents(Decimal("0.125")) == 12
    assert dollars_to_cents(Decimal("0.135")) == 14
    # The float 0.1 + 0.2 would drift; Decimal sums do not.
    assert dollars_to_cents(sum([Decimal("0.1")] * 3, Decimal(0))) == 30
    assert cents_to_dollars(-1200) == Decimal("-12.00")
