"""The sandbox's billing endpoints: invoices (list, pending, one, CSV) and Cost Explorer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bot.atlas import GROUP_BY, SERVICES
from bot.atlas._media import Operation, media_type
from bot.sandbox.data import Invoice, Org, cost_csv, cost_rows
from bot.sandbox.protocol import (
    HEX24,
    ITEMS_MARKER,
    ApiError,
    Call,
    ProcessingResponse,
    api_route,
    bool_param,
    date_param,
    int_param,
)
from bot.sandbox.state import CostQuery, SandboxState

_INVOICE_STATUSES = (
    "PENDING",
    "CLOSED",
    "FORGIVEN",
    "FAILED",
    "PAID",
    "FREE",
    "PREPAID",
    "INVOICED",
)


async def _list_invoices(call: Call, org: Org) -> Response:
    params = call.request.query_params
    items_per_page = int_param(params, "itemsPerPage", default=100, low=1, high=500)
    page = int_param(params, "pageNum", default=1, low=1, high=None)
    include_count = bool_param(params, "includeCount", default=True)
    bool_param(params, "viewLinkedInvoices", default=True)
    statuses = [s for value in params.getlist("statusNames") for s in value.split(",") if s]
    for status in statuses:
        if status not in _INVOICE_STATUSES:
            raise ApiError(
                400,
                "VALIDATION_ERROR",
                f"statusNames must be among {', '.join(_INVOICE_STATUSES)}, got {status!r}.",
                parameters=["statusNames", status],
            )
    from_date, to_date = date_param(params, "fromDate"), date_param(params, "toDate")
    sort_by = params.get("sortBy", "END_DATE")
    order_by = params.get("orderBy", "desc").lower()
    if sort_by != "END_DATE" or order_by not in ("asc", "desc"):
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            "sortBy must be END_DATE and orderBy asc or desc.",
            parameters=[sort_by, order_by],
        )
    invoices = [
        i
        for i in org.invoices
        if (not statuses or i.status_name in statuses)
        and (from_date is None or i.start >= from_date)
        and (to_date is None or i.end <= to_date)
    ]
    invoices.sort(key=lambda i: i.end, reverse=order_by == "desc")
    chosen = invoices[(page - 1) * items_per_page : page * items_per_page]
    body: dict[str, Any] = {
        "links": _page_links(call, page, items_per_page, len(invoices)),
        "results": [i.metadata(call.base_url) for i in chosen],
    }
    if include_count:
        body["totalCount"] = len(invoices)
    return call.json(body)


def _page_links(call: Call, page: int, per_page: int, total: int) -> list[dict[str, str]]:
    def href(number: int) -> str:
        query = [(k, v) for k, v in call.request.query_params.multi_items() if k != "pageNum"]
        query.append(("pageNum", str(number)))
        query_text = urlencode(query)
        return f"{call.base_url}{call.request.url.path}?{query_text}"

    links = [{"rel": "self", "href": href(page)}]
    if page * per_page < total:
        links.append({"rel": "next", "href": href(page + 1)})
    if page > 1:
        links.append({"rel": "previous", "href": href(page - 1)})
    return links


def _invoice_stream(call: Call, invoice: Invoice, body: Any) -> Response:
    return call.json_stream(200, body, lambda: (item.to_json() for item in invoice.line_items()))


def _with_marker(call: Call, invoice: Invoice) -> dict[str, Any]:
    doc = invoice.document(call.base_url)
    doc["lineItems"] = ITEMS_MARKER
    return doc


async def _list_pending(call: Call, org: Org) -> Response:
    doc = _with_marker(call, org.pending)
    if call.state.pending_shape == "object":
        return _invoice_stream(call, org.pending, doc)
    return _invoice_stream(call, org.pending, {"links": [], "results": [doc], "totalCount": 1})


def _find_invoice(call: Call, org: Org) -> Invoice:
    invoice_id = call.request.path_params["invoiceId"]
    invoice = org.invoice(invoice_id)
    if invoice is None:
        raise ApiError(
            404,
            "INVOICE_NOT_FOUND",
            f"Invoice {invoice_id} does not exist in organization {org.id}.",
            parameters=[invoice_id],
        )
    return invoice


def _csv_response(call: Call, chunks: Iterator[str] | str) -> Response:
    if isinstance(chunks, str):
        return Response(chunks.encode(), media_type=media_type(call.operation, "csv"))
    return StreamingResponse(
        (c.encode() for c in chunks), media_type=media_type(call.operation, "csv")
    )


async def _get_invoice(call: Call, org: Org) -> Response:
    invoice = _find_invoice(call, org)
    if call.accepted == "csv":
        return _csv_response(call, invoice.csv_chunks())
    return _invoice_stream(call, invoice, _with_marker(call, invoice))


async def _get_invoice_csv(call: Call, org: Org) -> Response:
    return _csv_response(call, _find_invoice(call, org).csv_chunks())


_COST_FIELDS = (
    "startDate",
    "endDate",
    "organizations",
    "projects",
    "clusters",
    "services",
    "groupBy",
    "includePartialMatches",
)


async def _create_cost_query(call: Call, org: Org) -> Response:
    raw = await call.request.body()
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise ApiError(400, "INVALID_JSON", "The request body must be a JSON object.")
    unknown = sorted(set(payload) - set(_COST_FIELDS))
    if unknown:
        raise ApiError(
            400,
            "INVALID_ATTRIBUTE",
            f"Invalid attribute {unknown[0]} specified.",
            parameters=[unknown[0]],
        )
    problems: list[tuple[str, str]] = []
    dates: dict[str, date] = {}
    for name in ("startDate", "endDate"):
        value = payload.get(name)
        if value is None:
            problems.append((name, "is required"))
            continue
        try:
            day = date.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            day = None
        if day is None or len(value) != 10:
            problems.append((name, "must be a date in the form YYYY-MM-DD"))
        elif day.day != 1:
            problems.append((name, "must be the first day of a month"))
        else:
            dates[name] = day
    filters: dict[str, tuple[str, ...]] = {}
    for name in ("organizations", "projects", "clusters", "services"):
        values = payload.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            problems.append((name, "must be a list of strings"))
            continue
        if name == "services":
            bad = [v for v in values if v not in SERVICES]
            if bad:
                problems.append((name, f"unknown service {bad[0]!r}"))
        else:
            bad = [v for v in values if not HEX24.fullmatch(v)]
            if bad:
                problems.append((name, f"{bad[0]!r} is not a 24-hex-digit ID"))
        filters[name] = tuple(values)
    group_by = payload.get("groupBy")
    if group_by is not None and group_by not in GROUP_BY:
        problems.append(("groupBy", f"must be one of {', '.join(GROUP_BY)}"))
    if not isinstance(payload.get("includePartialMatches", False), bool):
        problems.append(("includePartialMatches", "must be a boolean"))
    if problems:
        field_name, description = problems[0]
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"Invalid Cost Explorer query: {field_name} {description}.",
            parameters=[field_name],
            fields=problems,
        )
    start, end = dates["startDate"], dates["endDate"]
    data = call.state.data
    if end <= start:
        problem = "endDate must be after startDate (endDate is exclusive)"
    elif start < data.earliest_cost_month():
        problem = f"startDate must be on or after {data.earliest_cost_month().isoformat()}"
    elif end > data.latest_cost_end():
        problem = f"endDate must be on or before {data.latest_cost_end().isoformat()}"
    else:
        problem = None
    if problem:
        raise ApiError(
            400,
            "INVALID_DATE_RANGE",
            f"Invalid Cost Explorer date range: {problem}.",
            parameters=[start.isoformat(), end.isoformat()],
        )
    query = CostQuery(org.id, start, end, group_by, filters)
    return call.json({"token": call.state._new_cost_query(query)}, status=202)


async def _get_cost_result(call: Call, org: Org) -> Response:
    state = call.state
    token = call.request.path_params["token"]
    query = state._cost_queries.get(token)
    if query is None or query.org_id != org.id:
        raise ApiError(
            404,
            "RESOURCE_NOT_FOUND",
            f"No Cost Explorer query with token {token} exists in organization {org.id}.",
            parameters=[token],
        )
    query.polls += 1
    if query.polls <= state.cost_polls_before_ready:
        if call.envelope and call.accepted == "json":
            return call.json({}, status=102)
        return ProcessingResponse(close=state.processing_mode == "close")
    if query.rows is None:
        query.rows = cost_rows(
            org, query.start, query.end, group_by=query.group_by, **query.filters
        )
    if call.accepted == "csv":
        return _csv_response(call, cost_csv(query.rows))
    return call.json({"usageDetails": query.rows})


def billing_routes(state: SandboxState) -> list[Route]:
    """The billing operations, each behind the API pipeline (``protocol.api_route``)."""
    api = [
        ("/orgs/{orgId}/invoices", Operation.LIST_INVOICES, _list_invoices, "GET"),
        ("/orgs/{orgId}/invoices/pending", Operation.LIST_PENDING, _list_pending, "GET"),
        ("/orgs/{orgId}/invoices/{invoiceId}", Operation.GET_INVOICE, _get_invoice, "GET"),
        (
            "/orgs/{orgId}/invoices/{invoiceId}/csv",
            Operation.GET_INVOICE_CSV,
            _get_invoice_csv,
            "GET",
        ),
        (
            "/orgs/{orgId}/billing/costExplorer/usage",
            Operation.CREATE_COST_QUERY,
            _create_cost_query,
            "POST",
        ),
        (
            "/orgs/{orgId}/billing/costExplorer/usage/{token}",
            Operation.GET_COST_RESULT,
            _get_cost_result,
            "GET",
        ),
    ]
    return [api_route(path, op, handler, state, method) for path, op, handler, method in api]
