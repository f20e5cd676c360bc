"""Money: one formatter and one parser, so every surface shows amounts the same way.

Amounts travel as integer cents (Atlas invoices) or ``Decimal`` dollars (Cost
Explorer); floats never take part in a sum.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal

_CENT = Decimal("0.01")


def format_cents(cents: int) -> str:
    """``123456`` → ``$1,234.56``; ``-1200`` → ``-$12.00``."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(int(cents)), 100)
    return f"{sign}${dollars:,}.{rest:02d}"


def dollars_to_cents(amount: Decimal | int | str) -> int:
    """Exact dollars → cents, rounding half to even at the cent (the banker's rule)."""
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def cents_to_dollars(cents: int) -> Decimal:
    return (Decimal(int(cents)) / 100).quantize(_CENT)


_AMOUNT = re.compile(r"(-)?\s*\$?\s*(-)?\s*(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?")


def parse_dollars(text: str) -> int:
    """A human amount in US dollars → cents.

    Accepts ``5000``, ``$5,000``, ``5000.50``, ``-12``, ``-$12``, ``(12.00)``
    (accounting negative) and surrounding blanks. Raises ``ValueError`` naming
    the expected form for anything else (more than two decimals, letters,
    misplaced commas, two signs).
    """
    raw = text.strip()
    accounting = raw.startswith("(") and raw.endswith(")")
    if accounting:
        raw = raw[1:-1].strip()
    match = _AMOUNT.fullmatch(raw) if raw.isascii() else None
    if match is None or (match[1] and match[2]) or (accounting and (match[1] or match[2])):
        if re.fullmatch(r"-?\$?[\d,]*\.\d{3,}", raw):
            raise ValueError(f"{text!r} has more than two decimals; amounts are in whole cents")
        raise ValueError(f"{text!r} is not an amount like 5000, $5,000 or 5000.50")
    cents = int(match[3].replace(",", "")) * 100 + int((match[4] or "").ljust(2, "0"))
    return -cents if (match[1] or match[2] or accounting) else cents
