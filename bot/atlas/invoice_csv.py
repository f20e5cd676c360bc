"""Summarise an Atlas invoice CSV (totals by project, SKU and cluster) in one streaming pass."""

# Large organisations' invoices run to hundreds of thousands of rows, so the file is
# read row by row with constant memory: only the running totals are kept, never the rows.

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import chain
from typing import Protocol

__all__ = [
    "NO_CLUSTER",
    "NO_PROJECT",
    "NO_SKU",
    "InvoiceCsvError",
    "InvoiceCsvSummary",
    "summarise_invoice_csv",
    "summarise_invoice_csv_file",
]

NO_PROJECT = "(no project)"
NO_SKU = "(no sku)"
NO_CLUSTER = "(no cluster)"

# Keys of the optional block of ``key,value,`` lines before the table, lower-cased.
_HEADER_KEYS = {
    "invoice number": "invoice_number",
    "billing period": "billing_period",
    "organization name": "organization_name",
    "organization id": "organization_id",
}

_DIMENSIONS = ("project", "sku", "cluster")


class InvoiceCsvError(ValueError):
    """The CSV is not a readable Atlas invoice; ``line`` is the 1-based physical line."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem

    def __reduce__(self) -> tuple[type[InvoiceCsvError], tuple[int, str]]:
        return type(self), (self.line, self.problem)


@dataclass(frozen=True)
class InvoiceCsvSummary:
    """Totals of one invoice CSV, in integer cents."""

    invoice_number: str | None
    billing_period: str | None
    organization_name: str | None
    organization_id: str | None
    total_cents: int
    row_count: int
    by_project: dict[str, int]
    by_sku: dict[str, int]
    by_cluster: dict[str, int]
    credits_cents: int

    def top(self, dimension: str, n: int) -> list[tuple[str, int]]:
        """The ``n`` largest entries of ``project``, ``sku`` or ``cluster``: amount desc, then name."""
        key = dimension.strip().lower().removeprefix("by_")
        if key not in _DIMENSIONS:
            raise ValueError(
                f"unknown dimension {dimension!r}; expected one of {', '.join(_DIMENSIONS)}"
            )
        totals: dict[str, int] = getattr(self, f"by_{key}")
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[: max(n, 0)]


# ``-12.34``, ``$1,234.56``, ``-$1,234.56``, ``$-5``, ``($12.00)``, ``.5``: everything
# that is not the plain ``123.45`` of the fast path goes through this.
_AMOUNT = re.compile(
    r"""
    (?P<open>\()?\s*
    (?P<minus>-)?\s*
    (?P<dollar>\$)?\s*
    (?P<minus2>-)?\s*
    (?P<whole>\d{1,3}(?:,\d{3})+|\d+)?
    (?:\.(?P<frac>\d+))?
    \s*(?P<close>\))?
    """,
    re.VERBOSE | re.ASCII,
)


def _parse_amount(text: str) -> int | None:
    """Any accepted amount → cents; ``None`` when ``text`` is not a dollar amount."""
    raw = text.strip()
    if not raw:
        return 0
    match = _AMOUNT.fullmatch(raw)
    if match is None:
        return None
    opened, minus, minus2, whole, frac = match.group("open", "minus", "minus2", "whole", "frac")
    if (
        (opened is None) != (match["close"] is None)
        or (whole is None and frac is None)
        or sum(x is not None for x in (opened, minus, minus2)) > 1
    ):
        return None
    whole = (whole or "0").replace(",", "")
    frac = frac or ""
    if len(frac) <= 2:
        cents = int(whole) * 100 + int(frac.ljust(2, "0"))
    else:
        # Rare: sub-cent precision. Round half to even at the cent, exactly; written in
        # cents, the rounding is to an integer, which no context precision limits.
        in_cents = Decimal(f"{whole}{frac[:2]}.{frac[2:]}")
        cents = int(in_cents.to_integral_value(rounding=ROUND_HALF_EVEN))
    return -cents if (opened or minus or minus2) else cents


def _amount_or_raise(text: str, line: int) -> int:
    cents = _parse_amount(text)
    if cents is None:
        raise InvoiceCsvError(line, f"Amount {text!r} is not a dollar amount")
    return cents


def _is_table_header(names: list[str]) -> bool:
    """The table header has an Amount column; a ``key,value,`` line has one known key."""
    if "amount" not in names:
        return False
    # ``Organization Name,Amount,`` is a key/value line for an organisation called Amount.
    return names[0] not in _HEADER_KEYS or sum(1 for name in names if name) > 2


def summarise_invoice_csv(lines: Iterable[str]) -> InvoiceCsvSummary:
    """Summarise an invoice CSV given as text lines (a file opened with ``newline=""``, a list…).

    Raises ``InvoiceCsvError`` naming the line for an unreadable amount, a row shorter
    than the table header, or input without a table header that has an Amount column.
    """
    it = iter(lines)
    first = next(it, "")
    if first.startswith("\ufeff"):
        first = first[1:]
    reader = csv.reader(chain((first,), it))
    try:
        return _summarise(reader)
    except InvoiceCsvError:
        raise
    except (csv.Error, ValueError) as exc:
        # csv.Error: a field over csv.field_size_limit(); ValueError: an amount with
        # more digits than int() converts.
        raise InvoiceCsvError(max(reader.line_num, 1), f"unreadable row: {exc}") from exc


class _Reader(Iterator[list[str]], Protocol):
    line_num: int


def _summarise(reader: _Reader) -> InvoiceCsvSummary:
    meta: dict[str, str | None] = dict.fromkeys(_HEADER_KEYS.values())
    names: list[str] = []
    for row in reader:
        names = [cell.strip().lower() for cell in row]
        if not any(names):
            continue
        if _is_table_header(names):
            break
        if names[0] in _HEADER_KEYS:
            value = row[1].strip() if len(row) > 1 else ""
            meta[_HEADER_KEYS[names[0]]] = value or None
        # Anything else before the table (an unknown key, a title line) is ignored.
    else:
        raise InvoiceCsvError(
            max(reader.line_num, 1), "no table header with an Amount column found"
        )

    # Look the columns up once, by name; the first of a repeated name wins.
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        columns.setdefault(name, index)
    amount_i = columns["amount"]
    project_i = columns.get("project", -1)
    project_id_i = columns.get("project id", -1)
    sku_i = columns.get("sku", -1)
    cluster_i = columns.get("cluster", -1)
    # Trailing unnamed columns (a ``...,Amount,`` header) need not be present in the rows.
    width = len(names)
    while not names[width - 1]:
        width -= 1
    has_project, has_project_id = project_i >= 0, project_id_i >= 0
    has_sku, has_cluster = sku_i >= 0, cluster_i >= 0

    by_project: defaultdict[str, int] = defaultdict(int)
    by_sku: defaultdict[str, int] = defaultdict(int)
    by_cluster: defaultdict[str, int] = defaultdict(int)
    credits = count = 0

    # The hot loop: budgeted at well under 2x the cost of csv.reader alone, so the common
    # row takes a handful of C-level calls and the unusual cases branch off it.
    for row in reader:
        if len(row) < width:
            if not row or not "".join(row).strip():
                continue
            raise InvoiceCsvError(
                reader.line_num, f"row has {len(row)} columns, the header has {width}"
            )
        amount = row[amount_i]
        try:
            dot = amount[-3]  # cheaper than a slice; the except costs only when raised
        except IndexError:  # shorter than "0.00": blank, "5", "12"
            dot = ""
        if dot == ".":
            # Fast path: the plain ``123.45`` that Atlas writes.
            digits = amount.replace(".", "", 1)
            if digits.isdigit() and digits.isascii():
                cents = int(digits)
            elif digits[:1] == "-" and digits[1:].isdigit() and digits.isascii():
                cents = int(digits)
                credits += cents
            else:
                cents = _amount_or_raise(amount, reader.line_num)
                if cents < 0:
                    credits += cents
        else:
            if not amount.strip() and not "".join(row).strip():
                continue  # a row of empty cells is a blank line
            cents = _amount_or_raise(amount, reader.line_num)
            if cents < 0:
                credits += cents
        count += 1
        # Raw cells as keys (trimmed once at the end); a project name of only spaces is
        # therefore "(no project)" rather than its ID.
        by_project[
            (has_project and row[project_i]) or (has_project_id and row[project_id_i]) or ""
        ] += cents
        by_sku[row[sku_i] if has_sku else ""] += cents
        by_cluster[row[cluster_i] if has_cluster else ""] += cents

    return InvoiceCsvSummary(
        invoice_number=meta["invoice_number"],
        billing_period=meta["billing_period"],
        organization_name=meta["organization_name"],
        organization_id=meta["organization_id"],
        total_cents=sum(by_sku.values()),
        row_count=count,
        by_project=_tidy(by_project, NO_PROJECT),
        by_sku=_tidy(by_sku, NO_SKU),
        by_cluster=_tidy(by_cluster, NO_CLUSTER),
        credits_cents=credits,
    )


def _tidy(raw: dict[str, int], blank: str) -> dict[str, int]:
    """Trim the keys (the loop keeps raw cells to stay cheap) and name the blank bucket."""
    tidy: dict[str, int] = {}
    for key, cents in raw.items():
        name = key.strip() or blank
        tidy[name] = tidy.get(name, 0) + cents
    return tidy


def summarise_invoice_csv_file(path: str | os.PathLike[str]) -> InvoiceCsvSummary:
    """Summarise the invoice CSV at ``path`` (UTF-8, with or without a byte order mark)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return summarise_invoice_csv(f)
