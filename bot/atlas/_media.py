"""The versioned media type of each billing operation, in one table.

Atlas versions its API by media type (``application/vnd.atlas.<date>+json``).
The spec names 2023-01-01 for all six billing operations; a later date can be
adopted per operation by changing its row here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum


class Operation(StrEnum):
    LIST_INVOICES = "listInvoices"
    LIST_PENDING = "listInvoicePending"
    GET_INVOICE = "getInvoice"
    GET_INVOICE_CSV = "getInvoiceCsv"
    CREATE_COST_QUERY = "createCostExplorerProcess"
    GET_COST_RESULT = "getCostExplorerUsage"


API_VERSION: dict[Operation, str] = {
    Operation.LIST_INVOICES: "2023-01-01",
    Operation.LIST_PENDING: "2023-01-01",
    Operation.GET_INVOICE: "2023-01-01",
    Operation.GET_INVOICE_CSV: "2023-01-01",
    Operation.CREATE_COST_QUERY: "2023-01-01",
    Operation.GET_COST_RESULT: "2023-01-01",
}


def media_type(operation: Operation, fmt: str = "json") -> str:
    """``application/vnd.atlas.2023-01-01+json`` (or ``+csv``) for one operation."""
    return f"application/vnd.atlas.{API_VERSION[operation]}+{fmt}"
