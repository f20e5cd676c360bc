"""Money: one formatter and one parser, so every surface shows amounts the same way.

Amounts travel as integer cents (Atlas invoices) or ``Decimal`` dollars (Cost
Explorer); floats never take part in a sum.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

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


def parse_dollars(text: str) -> int:
    """A human amount in US dollars → cents.

    Accepts ``5000``, ``$5,000``, ``5000.50``, ``-12``, ``(12.00)`` (accounting
    negative) and surrounding blanks. Raises ``ValueError`` naming the expected
    form for anything else (more than two decimals, letters, misplaced commas).
    """
    raw = text.strip()
    negative = False
    if raw.startswith("(") and raw.endswith(")"):
        negative, raw = True, raw[1:-1].strip()
    if raw.startswith("-"):
        negative, raw = not negative, raw[1:].strip()
    if raw.startswith("$"):
        raw = raw[1:].strip()
    if raw.startswith("-"):
        negative, raw = not negative, raw[1:].strip()
    whole, _, frac = raw.partition(".")
    if "," in whole:
        groups = whole.split(",")
        if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
            raise ValueError(f"{text!r} is not an amount like 5000, $5,000 or 5000.50")
        whole = "".join(groups)
    if not whole.isdigit() or not whole.isascii() or (frac and not (frac.isdigit() and frac.isascii())):
        raise ValueError(f"{text!r} is not an amount like 5000, $5,000 or 5000.50")
    if len(frac) > 2:
        raise ValueError(f"{text!r} has more than two decimals; amounts are in whole cents")
    try:
        cents = int(whole) * 100 + int((frac + "00")[:2])
    except (ValueError, InvalidOperation) as exc:  # pragma: no cover - guarded above
        raise ValueError(f"{text!r} is not an amount like 5000, $5,000 or 5000.50") from exc
    return -cents if negative else cents
