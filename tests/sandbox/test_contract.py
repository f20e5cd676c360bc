"""The OpenAPI contract helper accepts what the spec allows and rejects the rest."""

from __future__ import annotations

import json

import pytest

from tests.contract import ContractError, validate_request, validate_response

JSON = "application/vnd.atlas.2023-01-01+json"
CSV = "application/vnd.atlas.2023-01-01+csv"
ORG = "4888442a3354817a7320eb61"
INVOICE = "32b6e34b3d91647abb20e7b8"
TOKEN = "a" * 64
BASE = "http://127.0.0.1:1/api/atlas/v2"
COST_BODY = json.dumps({"startDate": "2025-01-01", "endDate": "2025-03-01"}).encode()


def error(status: int, code: str = "X") -> bytes:
    return json.dumps({"error": status, "errorCode": code, "reason": "R", "detail": "d"}).encode()


@pytest.mark.parametrize(
    ("method", "path", "accept", "expected"),
    [
        ("GET", f"/orgs/{ORG}/invoices?itemsPerPage=500&pageNum=2", JSON, "listInvoices"),
        (
            "GET",
            f"/orgs/{ORG}/invoices?statusNames=PAID&statusNames=CLOSED&includeCount=false",
            JSON,
            "listInvoices",
        ),
        (
            "GET",
            f"/orgs/{ORG}/invoices/pending?envelope=true&pretty=false",
            JSON,
            "listInvoicePending",
        ),
        ("GET", f"/orgs/{ORG}/invoices/{INVOICE}", JSON, "getInvoice"),
        ("GET", f"/orgs/{ORG}/invoices/{INVOICE}", CSV, "getInvoice"),
        ("GET", f"/orgs/{ORG}/invoices/{INVOICE}/csv", CSV, "getInvoiceCsv"),
        ("GET", f"/orgs/{ORG}/billing/costExplorer/usage/{TOKEN}", JSON, "getCostExplorerUsage"),
    ],
)
def test_valid_requests_name_their_operation(
    method: str, path: str, accept: str, expected: str
) -> None:
    assert validate_request(method, BASE + path, {"Accept": accept}, None) == expected


def test_valid_post() -> None:
    url = f"{BASE}/orgs/{ORG}/billing/costExplorer/usage"
    headers = {"Accept": JSON, "Content-Type": JSON + "; charset=utf-8"}
    assert validate_request("POST", url, headers, COST_BODY) == "createCostExplorerProcess"


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "message"),
    [
        ("GET", "/orgs/{o}/nothing", {"Accept": JSON}, None, "no operation"),
        ("DELETE", "/orgs/{o}/invoices", {"Accept": JSON}, None, "allows only GET"),
        ("GET", "/orgs/ABCDEF0123456789abcdef01/invoices", {"Accept": JSON}, None, "path orgId"),
        ("GET", "/orgs/{o}%2F../invoices", {"Accept": JSON}, None, "path orgId"),
        ("GET", "/orgs/{o}/invoices/xyz", {"Accept": JSON}, None, "path invoiceId"),
        ("GET", "/orgs/{o}/billing/costExplorer/usage/abc", {"Accept": JSON}, None, "path token"),
        ("GET", "/orgs/{o}/invoices?itemsPerPage=0", {"Accept": JSON}, None, "itemsPerPage"),
        ("GET", "/orgs/{o}/invoices?itemsPerPage=501", {"Accept": JSON}, None, "itemsPerPage"),
        ("GET", "/orgs/{o}/invoices?itemsPerPage=ten", {"Accept": JSON}, None, "not an integer"),
        ("GET", "/orgs/{o}/invoices?pageNum=1&pageNum=2", {"Accept": JSON}, None, "2 times"),
        ("GET", "/orgs/{o}/invoices?fromDate=2025-13-01", {"Accept": JSON}, None, "fromDate"),
        ("GET", "/orgs/{o}/invoices?envelope=yes", {"Accept": JSON}, None, "true or false"),
        ("GET", "/orgs/{o}/invoices?colour=red", {"Accept": JSON}, None, "unknown query"),
        ("GET", "/orgs/{o}/invoices", {}, None, "no Accept"),
        ("GET", "/orgs/{o}/invoices", {"Accept": "application/json"}, None, "Accept"),
        ("GET", "/orgs/{o}/invoices", {"Accept": CSV}, None, "Accept"),
        (
            "GET",
            "/orgs/{o}/invoices",
            {"Accept": "application/vnd.atlas.2024-01-01+json"},
            None,
            "Accept",
        ),
        ("GET", "/orgs/{o}/invoices/{i}/csv", {"Accept": JSON}, None, "Accept"),
        ("GET", "/orgs/{o}/invoices", {"Accept": JSON}, b"{}", "takes no body"),
        (
            "POST",
            "/orgs/{o}/billing/costExplorer/usage",
            {"Accept": JSON, "Content-Type": "application/json"},
            COST_BODY,
            "Content-Type",
        ),
        (
            "POST",
            "/orgs/{o}/billing/costExplorer/usage",
            {"Accept": JSON, "Content-Type": JSON},
            None,
            "required",
        ),
        (
            "POST",
            "/orgs/{o}/billing/costExplorer/usage",
            {"Accept": JSON, "Content-Type": JSON},
            b"{not json",
            "not JSON",
        ),
        (
            "POST",
            "/orgs/{o}/billing/costExplorer/usage",
            {"Accept": JSON, "Content-Type": JSON},
            b'{"startDate": "2025-01-01"}',
            "'endDate' is a required property",
        ),
        (
            "POST",
            "/orgs/{o}/billing/costExplorer/usage",
            {"Accept": JSON, "Content-Type": JSON},
            b'{"startDate": "2025-01-01", "endDate": "2025-02-01", "projects": ["nope"]}',
            "does not match",
        ),
        (
            "POST",
            "/orgs/{o}/billing/costExplorer/usage",
            {"Accept": JSON, "Content-Type": JSON},
            b'{"startDate": "January", "endDate": "2025-02-01"}',
            "is not a 'date'",
        ),
    ],
)
def test_invalid_requests_are_rejected(
    method: str, path: str, headers: dict[str, str], body: bytes | None, message: str
) -> None:
    url = BASE + path.format(o=ORG, i=INVOICE)
    with pytest.raises(ContractError, match=message):
        validate_request(method, url, headers, body)


def test_contract_error_is_an_assertion_error() -> None:
    assert issubclass(ContractError, AssertionError)


LIST_URL = f"{BASE}/orgs/{ORG}/invoices"
POLL_URL = f"{BASE}/orgs/{ORG}/billing/costExplorer/usage/{TOKEN}"
INVOICE_META = {
    "id": INVOICE,
    "orgId": ORG,
    "statusName": "PAID",
    "startDate": "2025-01-01T00:00:00Z",
    "subtotalCents": 100,
}


def test_valid_responses_pass() -> None:
    page = json.dumps({"links": [], "results": [INVOICE_META], "totalCount": 1}).encode()
    validate_response("GET", LIST_URL, 200, {"Content-Type": JSON, "RateLimit-Limit": "100"}, page)
    validate_response("GET", LIST_URL, 404, {"Content-Type": "application/json"}, error(404))
    validate_response("GET", LIST_URL, 400, {"Content-Type": "application/json"}, error(400))
    validate_response("GET", POLL_URL, 102, {}, b"")
    validate_response("GET", POLL_URL, 200, {"Content-Type": JSON}, b'{"usageDetails": []}')
    validate_response("GET", POLL_URL, 200, {"Content-Type": CSV}, b"Billed Date\n2025-01-01\n")
    enveloped = json.dumps({"status": 102, "content": {}}).encode()
    validate_response("GET", POLL_URL + "?envelope=true", 200, {"Content-Type": JSON}, enveloped)
    listed = json.dumps({"links": [], "results": [], "status": 200}).encode()
    validate_response("GET", LIST_URL + "?envelope=true", 200, {"Content-Type": JSON}, listed)
    wrapped_error = json.dumps({"status": 404, "content": json.loads(error(404))}).encode()
    validate_response(
        "GET", LIST_URL + "?envelope=true", 200, {"Content-Type": "application/json"}, wrapped_error
    )


@pytest.mark.parametrize(
    ("url", "status", "headers", "body", "message"),
    [
        (LIST_URL, 418, {"Content-Type": "application/json"}, error(418), "not among"),
        (LIST_URL, 201, {"Content-Type": JSON}, b"{}", "not among"),
        (LIST_URL, 200, {"Content-Type": CSV}, b"a,b\n", "Content-Type"),
        (LIST_URL, 200, {"Content-Type": "text/html"}, b"<html>", "unexpected Content-Type"),
        (LIST_URL, 200, {"Content-Type": JSON}, b'{"results": {}}', "is not of type 'array'"),
        (LIST_URL, 200, {"Content-Type": JSON}, b'{"links": []}', "'results' is a required"),
        (
            LIST_URL,
            200,
            {"Content-Type": JSON},
            json.dumps({"results": [{**INVOICE_META, "id": "XYZ"}]}).encode(),
            "does not match",
        ),
        (
            LIST_URL,
            200,
            {"Content-Type": JSON},
            json.dumps({"results": [{**INVOICE_META, "subtotalCents": 1.5}]}).encode(),
            "is not of type 'integer'",
        ),
        (
            LIST_URL,
            200,
            {"Content-Type": JSON},
            json.dumps({"results": [{**INVOICE_META, "endDate": "yesterday"}]}).encode(),
            "is not a 'date-time'",
        ),
        (LIST_URL, 200, {"Content-Type": JSON}, b'{"results": [', "not valid JSON"),
        (
            LIST_URL,
            200,
            {"Content-Type": JSON, "RateLimit-Remaining": "many"},
            b'{"results": []}',
            "not an integer",
        ),
        (LIST_URL, 404, {"Content-Type": "application/json"}, b'{"error": 404}', "errorCode"),
        (LIST_URL, 404, {"Content-Type": "application/json"}, error(500), "body says error 500"),
        (LIST_URL, 404, {"Content-Type": JSON}, error(404), "must be application/json"),
        (POLL_URL, 102, {}, b"{}", "no body"),
        (POLL_URL, 200, {"Content-Type": CSV}, b'a,"b\n', "not valid UTF-8 CSV"),
        (POLL_URL, 200, {"Content-Type": CSV}, b"\xff\xfe", "not valid UTF-8 CSV"),
        (
            LIST_URL + "?envelope=true",
            404,
            {"Content-Type": "application/json"},
            error(404),
            "must be HTTP 200",
        ),
        (
            LIST_URL + "?envelope=true",
            200,
            {"Content-Type": JSON},
            b'{"content": {}}',
            "integer status",
        ),
        (
            POLL_URL + "?envelope=true",
            200,
            {"Content-Type": JSON},
            b'{"status": 102, "content": {"a": 1}}',
            "carries no content",
        ),
        (
            f"{BASE}/orgs/{ORG}/invoices/{INVOICE}/csv",
            406,
            {"Content-Type": "application/json"},
            b'{"error": "406", "errorCode": "X"}',
            "is not of type 'integer'",
        ),
    ],
)
def test_invalid_responses_are_rejected(
    url: str, status: int, headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        validate_response("GET", url, status, headers, body)
