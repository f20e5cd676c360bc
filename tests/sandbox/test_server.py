"""The sandbox Atlas over real loopback HTTP: every route, both auth methods, errors and quirks."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import re
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Generator
from decimal import Decimal

import httpx
import pytest

from bot.core.months import add_months
from bot.sandbox import OAUTH_TOKEN, Fault, SandboxServer
from bot.sandbox.data import HUGE_LINE_ITEMS
from tests.contract import ContractError, contract_hooks, validate_request, validate_response

JSON = "application/vnd.atlas.2023-01-01+json"
CSV = "application/vnd.atlas.2023-01-01+csv"
API = "/api/atlas/v2"
UNKNOWN_ORG = "0" * 24


class Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


async def fetch_token(sandbox: SandboxServer) -> str:
    creds = sandbox.state.credentials
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=False) as http:
        response = await http.post(
            "/api/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(creds.client_id, creds.client_secret),
        )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def client(
    sandbox: SandboxServer,
    auth: httpx.Auth | None = None,
    *,
    check_requests: bool = True,
    check_responses: bool = True,
    accept: str | None = JSON,
    read_timeout: float = 10.0,
) -> httpx.AsyncClient:
    """A client whose every Atlas request and response is checked against the spec."""
    return httpx.AsyncClient(
        base_url=sandbox.base_url,
        auth=auth,
        headers={"Accept": accept} if accept else {},
        timeout=httpx.Timeout(10.0, read=read_timeout),
        verify=False,  # plain HTTP; skips loading the CA bundle for every client
        event_hooks=contract_hooks(requests=check_requests, responses=check_responses),
    )


def digest(sandbox: SandboxServer) -> httpx.DigestAuth:
    creds = sandbox.state.credentials
    return httpx.DigestAuth(creds.public_key, creds.private_key)


@pytest.fixture(params=["bearer", "digest"])
async def api(
    sandbox: SandboxServer, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    auth = Bearer(await fetch_token(sandbox)) if request.param == "bearer" else digest(sandbox)
    async with client(sandbox, auth) as http:
        yield http


@pytest.fixture
async def raw(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    """Authenticated, responses checked, requests not: for deliberately wrong requests."""
    async with client(sandbox, digest(sandbox), check_requests=False) as http:
        yield http


def org_ids(sandbox: SandboxServer) -> tuple[str, ...]:
    return sandbox.data.org_ids


def first_org(sandbox: SandboxServer):
    return sandbox.data.org(org_ids(sandbox)[0])


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == status
    assert body["errorCode"] == code
    assert body["reason"]
    assert body["detail"]
    assert isinstance(body["parameters"], list)
    return body


def cost_body(sandbox: SandboxServer, back: int = 6, **extra: object) -> dict:
    today = sandbox.data.today
    return {
        "startDate": add_months(today, -back).isoformat(),
        "endDate": add_months(today, 1).isoformat(),
        **extra,
    }


async def start_cost_query(http: httpx.AsyncClient, org_id: str, body: dict) -> str:
    response = await http.post(
        f"{API}/orgs/{org_id}/billing/costExplorer/usage",
        json=body,
        headers={"Content-Type": JSON},
    )
    assert response.status_code == 202, response.text
    token = response.json()["token"]
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    return token


async def cost_result(http: httpx.AsyncClient, org_id: str, token: str, **kw) -> httpx.Response:
    return await http.get(f"{API}/orgs/{org_id}/billing/costExplorer/usage/{token}", **kw)


# --- every route, both auth methods --------------------------------------------------


async def test_every_operation_answers_under_both_auth_methods(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    org = first_org(sandbox)
    listed = await api.get(f"{API}/orgs/{org.id}/invoices")
    assert listed.status_code == 200
    assert listed.headers["content-type"] == JSON
    assert [r["id"] for r in listed.json()["results"]] == [i.id for i in org.invoices]
    assert listed.json()["totalCount"] == 7

    pending = await api.get(f"{API}/orgs/{org.id}/invoices/pending")
    assert pending.status_code == 200
    body = pending.json()
    assert body["totalCount"] == 1 and body["links"] == []
    assert body["results"][0]["id"] == org.pending.id
    assert body["results"][0]["statusName"] == "PENDING"
    assert body["results"][0]["payments"] == []

    invoice = org.closed[0]
    full = await api.get(f"{API}/orgs/{org.id}/invoices/{invoice.id}")
    assert full.status_code == 200
    doc = full.json()
    assert doc["subtotalCents"] == invoice.subtotal_cents
    assert len(doc["lineItems"]) == invoice.item_count
    assert doc["payments"] and "refunds" in doc

    as_csv = await api.get(f"{API}/orgs/{org.id}/invoices/{invoice.id}", headers={"Accept": CSV})
    csv_route = await api.get(
        f"{API}/orgs/{org.id}/invoices/{invoice.id}/csv", headers={"Accept": CSV}
    )
    assert as_csv.status_code == csv_route.status_code == 200
    assert as_csv.headers["content-type"] == csv_route.headers["content-type"] == CSV
    assert as_csv.text == csv_route.text == invoice.csv_text()

    token = await start_cost_query(api, org.id, cost_body(sandbox))
    with pytest.raises(httpx.RemoteProtocolError):
        await cost_result(api, org.id, token)
    ready = await cost_result(api, org.id, token)
    assert ready.status_code == 200
    assert ready.json()["usageDetails"]

    for response in (listed, pending, full, as_csv, ready):
        assert response.headers["RateLimit-Limit"] == "100"
        assert int(response.headers["RateLimit-Remaining"]) < 100
    ops = [
        r.operation
        for r in sandbox.state.requests
        if r.status != 401 and r.operation != OAUTH_TOKEN
    ]
    assert ops == [
        "listInvoices",
        "listInvoicePending",
        "getInvoice",
        "getInvoice",
        "getInvoiceCsv",
        "createCostExplorerProcess",
        "getCostExplorerUsage",
        "getCostExplorerUsage",
    ]


async def test_every_org_is_readable(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    for org_id in org_ids(sandbox):
        response = await api.get(f"{API}/orgs/{org_id}/invoices", params={"itemsPerPage": 1})
        assert response.status_code == 200
        assert response.json()["results"][0]["orgId"] == org_id


# --- authentication ------------------------------------------------------------------


async def test_missing_auth_gets_a_digest_challenge(sandbox: SandboxServer) -> None:
    async with client(sandbox) as http:
        response = await http.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices")
    assert_error(response, 401, "UNAUTHORIZED")
    challenge = response.headers["WWW-Authenticate"]
    assert re.fullmatch(
        r'Digest realm="MMS Public API", domain="", nonce="[0-9a-f]{32}", '
        r'algorithm=MD5, qop="auth", stale=false',
        challenge,
    )
    assert sandbox.state.requests[-1].status == 401


async def test_digest_handshake_is_two_requests_then_one(sandbox: SandboxServer) -> None:
    org_id = org_ids(sandbox)[0]
    async with client(sandbox, digest(sandbox)) as http:
        assert (await http.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
        assert (await http.get(f"{API}/orgs/{org_id}/invoices/pending")).status_code == 200
    statuses = [r.status for r in sandbox.state.requests]
    assert statuses == [401, 200, 200]
    assert "authorization" not in sandbox.state.requests[0].headers
    assert sandbox.state.requests[1].headers["authorization"].startswith("Digest ")


async def test_wrong_digest_password_is_refused(sandbox: SandboxServer) -> None:
    creds = sandbox.state.credentials
    auth = httpx.DigestAuth(creds.public_key, "not-the-private-key")
    async with client(sandbox, auth) as http:
        response = await http.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices")
    assert_error(response, 401, "UNAUTHORIZED")
    assert [r.status for r in sandbox.state.requests] == [401, 401]


def digest_header(
    sandbox: SandboxServer, nonce: str, method: str, uri: str, **override: str
) -> str:
    creds = sandbox.state.credentials
    values = {
        "username": creds.public_key,
        "realm": "MMS Public API",
        "nonce": nonce,
        "uri": uri,
        "nc": "00000001",
        "cnonce": "0a4f113b",
        "qop": "auth",
    }
    values.update(override)

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{values['username']}:{values['realm']}:{creds.private_key}")
    ha2 = md5(f"{method}:{values['uri']}")
    response = md5(f"{ha1}:{nonce}:{values['nc']}:{values['cnonce']}:{values['qop']}:{ha2}")
    values.setdefault("response", response)
    values["response"] = override.get("response", response)
    return "Digest " + ", ".join(f'{k}="{v}"' for k, v in values.items())


async def test_digest_response_is_really_verified(sandbox: SandboxServer) -> None:
    path = f"{API}/orgs/{org_ids(sandbox)[0]}/invoices"
    async with client(sandbox) as http:
        challenge = (await http.get(path)).headers["WWW-Authenticate"]
        found = re.search(r'nonce="([^"]+)"', challenge)
        assert found is not None
        nonce = found.group(1)
        good = digest_header(sandbox, nonce, "GET", path)
        assert (await http.get(path, headers={"Authorization": good})).status_code == 200
        for bad in (
            digest_header(sandbox, nonce, "GET", path, response="0" * 32),
            digest_header(sandbox, nonce, "GET", path + "/pending"),  # signed for another URI
            digest_header(sandbox, nonce, "POST", path),  # signed for another method
            digest_header(sandbox, nonce, "GET", path, realm="Other"),
            digest_header(sandbox, nonce, "GET", path, username="nobody12"),
        ):
            response = await http.get(path, headers={"Authorization": bad})
            assert_error(response, 401, "UNAUTHORIZED")
            assert response.headers["WWW-Authenticate"].startswith("Digest ")
        forged_nonce = digest_header(sandbox, "f" * 32, "GET", path)
        stale = await http.get(path, headers={"Authorization": forged_nonce})
        assert stale.status_code == 401
        assert "stale=true" in stale.headers["WWW-Authenticate"]


async def test_service_account_token(sandbox: SandboxServer) -> None:
    creds = sandbox.state.credentials
    sandbox.state.token_ttl_seconds = 1800
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=False) as http:
        response = await http.post(
            "/api/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(creds.client_id, creds.client_secret),
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    logged = sandbox.state.requests[-1]
    assert logged.operation == OAUTH_TOKEN
    assert logged.body == b"grant_type=client_credentials"


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        (
            {"data": {"grant_type": "client_credentials"}, "auth": ("mdb_sa_id_x", "s")},
            401,
            "invalid_client",
        ),
        ({"data": {"grant_type": "client_credentials"}}, 401, "invalid_client"),
        ({"data": {"grant_type": "password"}, "auth": "good"}, 400, "unsupported_grant_type"),
        ({"data": {}, "auth": "good"}, 400, "invalid_request"),
        ({"json": {"grant_type": "client_credentials"}, "auth": "good"}, 400, "invalid_request"),
    ],
)
async def test_token_endpoint_errors(
    sandbox: SandboxServer, kwargs: dict, status: int, error: str
) -> None:
    creds = sandbox.state.credentials
    if kwargs.get("auth") == "good":
        kwargs = {**kwargs, "auth": (creds.client_id, creds.client_secret)}
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=False) as http:
        response = await http.post("/api/oauth/token", **kwargs)
    assert response.status_code == status
    assert response.json()["error"] == error


async def test_secret_of_the_right_client_is_checked(sandbox: SandboxServer) -> None:
    creds = sandbox.state.credentials
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=False) as http:
        response = await http.post(
            "/api/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(creds.client_id, creds.client_secret[:-1] + "x"),
        )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_bearer_tokens_expire_and_can_be_revoked(sandbox: SandboxServer) -> None:
    now = [1_000.0]
    sandbox.state.clock = lambda: now[0]
    org_id = org_ids(sandbox)[0]
    token = await fetch_token(sandbox)
    async with client(sandbox, Bearer(token)) as http:
        assert (await http.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
        now[0] += 3599
        assert (await http.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
        now[0] += 1
        expired = await http.get(f"{API}/orgs/{org_id}/invoices")
        assert_error(expired, 401, "UNAUTHORIZED")
        assert expired.headers["WWW-Authenticate"].startswith("Bearer ")

    fresh = await fetch_token(sandbox)
    creds = sandbox.state.credentials
    async with client(sandbox, Bearer(fresh)) as http:
        assert (await http.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
        revoke = await http.post(
            "/api/oauth/revoke",
            data={"token": fresh},
            auth=(creds.client_id, creds.client_secret),
        )
        assert revoke.status_code == 200
        assert_error(await http.get(f"{API}/orgs/{org_id}/invoices"), 401, "UNAUTHORIZED")

    async with client(sandbox, Bearer("made-up")) as http:
        assert_error(await http.get(f"{API}/orgs/{org_id}/invoices"), 401, "UNAUTHORIZED")


async def test_revoke_needs_client_credentials(sandbox: SandboxServer) -> None:
    token = await fetch_token(sandbox)
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=False) as http:
        response = await http.post("/api/oauth/revoke", data={"token": token})
    assert response.status_code == 401
    async with client(sandbox, Bearer(token)) as http:
        ok = await http.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices/pending")
    assert ok.status_code == 200


async def test_key_without_billing_viewer_gets_403_everywhere(sandbox: SandboxServer) -> None:
    creds = sandbox.state.credentials
    auth = httpx.DigestAuth(creds.no_role_public_key, creds.no_role_private_key)
    async with client(sandbox, auth) as http:
        for org_id in org_ids(sandbox):
            org = sandbox.data.org(org_id)
            assert org is not None
            for response in (
                await http.get(f"{API}/orgs/{org_id}/invoices"),
                await http.get(f"{API}/orgs/{org_id}/invoices/pending"),
                await http.get(f"{API}/orgs/{org_id}/invoices/{org.closed[0].id}"),
                await http.get(
                    f"{API}/orgs/{org_id}/invoices/{org.closed[0].id}/csv", headers={"Accept": CSV}
                ),
                await http.post(
                    f"{API}/orgs/{org_id}/billing/costExplorer/usage",
                    json=cost_body(sandbox),
                    headers={"Content-Type": JSON},
                ),
                await cost_result(http, org_id, "a" * 64),
            ):
                body = assert_error(response, 403, "USER_UNAUTHORIZED")
                assert "Organization Billing Viewer" in body["detail"]


# --- media types, patterns, not found ------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [None, "application/json", "*/*", "application/vnd.atlas.2024-05-30+json", CSV],
)
async def test_unversioned_or_wrong_accept_is_406(
    sandbox: SandboxServer, raw: httpx.AsyncClient, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    if accept is None:
        raw.headers.pop("Accept")
    response = await raw.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices", headers=headers)
    assert_error(response, 406, "INVALID_VERSION_DATE")


async def test_csv_route_refuses_json_accept(
    sandbox: SandboxServer, raw: httpx.AsyncClient
) -> None:
    org = first_org(sandbox)
    response = await raw.get(f"{API}/orgs/{org.id}/invoices/{org.closed[0].id}/csv")
    assert_error(response, 406, "INVALID_VERSION_DATE")


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
async def test_post_needs_the_versioned_content_type(
    sandbox: SandboxServer, raw: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps(cost_body(sandbox)).encode()
    response = await raw.post(
        f"{API}/orgs/{org_ids(sandbox)[0]}/billing/costExplorer/usage",
        content=body,
        headers=headers,
    )
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize(
    "path",
    [
        "/orgs/ABCDEF0123456789ABCDEF01/invoices",
        "/orgs/abc/invoices/pending",
        "/orgs/{org}/invoices/NOTHEX0123456789abcdef01",
        "/orgs/{org}/invoices/xyz/csv",
        "/orgs/{org}/billing/costExplorer/usage/" + "a" * 63,
        "/orgs/{org}/billing/costExplorer/usage/" + "a" * 65,
    ],
)
async def test_malformed_path_parameters_are_400(
    sandbox: SandboxServer, raw: httpx.AsyncClient, path: str
) -> None:
    accept = CSV if path.endswith("/csv") else JSON
    response = await raw.get(API + path.format(org=org_ids(sandbox)[0]), headers={"Accept": accept})
    assert_error(response, 400, "VALIDATION_ERROR")
    with pytest.raises(ContractError):
        validate_request("GET", response.request.url, {"Accept": accept}, None)


async def test_not_found(sandbox: SandboxServer, raw: httpx.AsyncClient) -> None:
    acme, staging = org_ids(sandbox)[:2]
    invoice_id = first_org(sandbox).closed[0].id
    assert_error(await raw.get(f"{API}/orgs/{UNKNOWN_ORG}/invoices"), 404, "ORG_NOT_FOUND")
    assert_error(await raw.get(f"{API}/orgs/{acme}/invoices/{'e' * 24}"), 404, "INVOICE_NOT_FOUND")
    # An invoice of another org is not found either.
    assert_error(
        await raw.get(f"{API}/orgs/{staging}/invoices/{invoice_id}"), 404, "INVOICE_NOT_FOUND"
    )
    assert_error(await cost_result(raw, acme, "b" * 64), 404, "RESOURCE_NOT_FOUND")
    token = await start_cost_query(raw, acme, cost_body(sandbox))
    assert_error(await cost_result(raw, staging, token), 404, "RESOURCE_NOT_FOUND")
    async with httpx.AsyncClient(base_url=sandbox.base_url, auth=digest(sandbox)) as plain:
        missing = await plain.get(f"{API}/orgs/{acme}/clusters", headers={"Accept": JSON})
    assert missing.status_code == 404
    assert missing.json()["errorCode"] == "RESOURCE_NOT_FOUND"


# --- invoices ------------------------------------------------------------------------


async def test_invoice_list_pages_and_filters(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    org = first_org(sandbox)
    path = f"{API}/orgs/{org.id}/invoices"
    page1 = (await api.get(path, params={"itemsPerPage": 3})).json()
    assert [r["id"] for r in page1["results"]] == [i.id for i in org.invoices[:3]]
    links = {link["rel"]: link["href"] for link in page1["links"]}
    assert set(links) == {"self", "next"}
    page2 = (await api.get(links["next"])).json()
    assert [r["id"] for r in page2["results"]] == [i.id for i in org.invoices[3:6]]
    assert {link["rel"] for link in page2["links"]} == {"self", "next", "previous"}
    page3 = (await api.get(path, params={"itemsPerPage": 3, "pageNum": 3})).json()
    assert [r["id"] for r in page3["results"]] == [org.invoices[6].id]
    assert {link["rel"] for link in page3["links"]} == {"self", "previous"}
    assert page3["totalCount"] == 7

    no_count = (await api.get(path, params={"includeCount": "false"})).json()
    assert "totalCount" not in no_count
    paid = (await api.get(path, params=[("statusNames", "PAID")])).json()
    assert {r["statusName"] for r in paid["results"]} == {"PAID"}
    assert paid["totalCount"] == 5
    two = (await api.get(path, params=[("statusNames", "PAID"), ("statusNames", "PENDING")])).json()
    assert two["totalCount"] == 6
    ascending = (await api.get(path, params={"orderBy": "asc"})).json()
    assert [r["id"] for r in ascending["results"]] == [i.id for i in reversed(org.invoices)]
    since = org.closed[2].start.isoformat()
    recent = (await api.get(path, params={"fromDate": since})).json()
    assert [r["id"] for r in recent["results"]] == [i.id for i in org.invoices[:4]]
    until = org.closed[1].end.isoformat()
    older = (await api.get(path, params={"toDate": until})).json()
    assert [r["id"] for r in older["results"]] == [i.id for i in org.closed[1:]]


@pytest.mark.parametrize(
    "params",
    [
        {"itemsPerPage": "0"},
        {"itemsPerPage": "501"},
        {"pageNum": "0"},
        {"includeCount": "maybe"},
        {"fromDate": "2025-02-30"},
        {"statusNames": "UNPAID"},
    ],
)
async def test_invoice_list_rejects_bad_query(
    sandbox: SandboxServer, raw: httpx.AsyncClient, params: dict
) -> None:
    response = await raw.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices", params=params)
    assert_error(response, 400, "VALIDATION_ERROR")


async def test_invoice_metadata_matches_the_invoice(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    org = first_org(sandbox)
    listed = (await api.get(f"{API}/orgs/{org.id}/invoices")).json()["results"]
    for meta, invoice in zip(listed, org.invoices, strict=True):
        full = (await api.get(f"{API}/orgs/{org.id}/invoices/{invoice.id}")).json()
        for name, value in meta.items():
            assert full[name] == value, name
        assert sum(i["totalPriceCents"] for i in full["lineItems"]) == full["subtotalCents"]
        assert full["amountBilledCents"] == full["subtotalCents"] + full["salesTaxCents"]
        owed = sum(
            Decimal(p["amountBilledCents"]) * Decimal(p["unitPrice"]) + p["salesTaxCents"]
            for p in full["payments"]
        )
        if full["payments"]:
            assert owed == full["amountBilledCents"]


async def test_pending_can_be_a_bare_object(sandbox: SandboxServer) -> None:
    org = first_org(sandbox)
    sandbox.state.pending_shape = "object"
    # The spec documents a list, so this shape fails the contract on purpose.
    async with client(sandbox, digest(sandbox), check_responses=False) as http:
        response = await http.get(f"{API}/orgs/{org.id}/invoices/pending")
    body = response.json()
    assert body["id"] == org.pending.id
    assert "results" not in body
    with pytest.raises(ValueError):
        sandbox.state.pending_shape = "tuple"


async def test_invoice_csv_amounts_add_up_to_the_subtotal(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    org = first_org(sandbox)
    for invoice in org.invoices:
        meta = (await api.get(f"{API}/orgs/{org.id}/invoices/{invoice.id}")).json()
        response = await api.get(
            f"{API}/orgs/{org.id}/invoices/{invoice.id}/csv", headers={"Accept": CSV}
        )
        lines = response.text.split("\n")
        assert lines[0] == f"Invoice Number,{invoice.id},"
        assert lines[1].startswith('Billing Period,"') and lines[1].endswith('",')
        assert lines[2] == f"Organization Name,{org.name},"
        assert lines[3] == f"Organization ID,{org.id},"
        assert lines[4] == ""
        rows = list(csv.DictReader(io.StringIO("\n".join(lines[5:]))))
        total = sum(Decimal(r["Amount"]) for r in rows)
        assert total * 100 == meta["subtotalCents"]
        assert len(rows) == invoice.item_count


async def test_huge_invoice_csv_streams_200000_rows(sandbox: SandboxServer) -> None:
    huge = sandbox.data.org(sandbox.data.huge_org_id)
    assert huge is not None
    invoice = huge.latest_closed
    path = f"{API}/orgs/{huge.id}/invoices/{invoice.id}/csv"
    async with (
        client(sandbox, digest(sandbox), check_responses=False, accept=CSV) as http,
        http.stream("GET", path) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == CSV
        assert "content-length" not in response.headers  # streamed, chunked
        lines = 0
        total_cents = 0
        async for line in response.aiter_lines():
            lines += 1
            if lines > 6 and line:
                amount = line.rsplit(",", 1)[1]
                whole, _, frac = amount.lstrip("-").partition(".")
                cents = int(whole) * 100 + int(frac)
                total_cents += -cents if amount.startswith("-") else cents
    assert lines == 6 + HUGE_LINE_ITEMS
    assert total_cents == invoice.subtotal_cents


async def test_huge_invoice_json_streams_too(sandbox: SandboxServer) -> None:
    huge = sandbox.data.org(sandbox.data.huge_org_id)
    assert huge is not None
    invoice = huge.latest_closed
    path = f"{API}/orgs/{huge.id}/invoices/{invoice.id}"
    async with (
        client(sandbox, digest(sandbox), check_responses=False) as http,
        http.stream("GET", path) as response,
    ):
        assert "content-length" not in response.headers
        body = json.loads(await response.aread())
    assert len(body["lineItems"]) == HUGE_LINE_ITEMS
    assert body["subtotalCents"] == invoice.subtotal_cents


# --- envelope and pretty -------------------------------------------------------------


async def test_envelope_wraps_bodies_and_errors(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    org = first_org(sandbox)
    listed = await api.get(f"{API}/orgs/{org.id}/invoices", params={"envelope": "true"})
    assert listed.status_code == 200
    assert listed.json()["status"] == 200
    assert len(listed.json()["results"]) == 7

    invoice = await api.get(
        f"{API}/orgs/{org.id}/invoices/{org.closed[1].id}", params={"envelope": "true"}
    )
    assert set(invoice.json()) == {"status", "content"}
    assert invoice.json()["content"]["id"] == org.closed[1].id

    missing = await api.get(f"{API}/orgs/{org.id}/invoices/{'e' * 24}", params={"envelope": "true"})
    assert missing.status_code == 200
    assert missing.json()["status"] == 404
    assert missing.json()["content"]["errorCode"] == "INVOICE_NOT_FOUND"

    created = await api.post(
        f"{API}/orgs/{org.id}/billing/costExplorer/usage",
        params={"envelope": "true"},
        json=cost_body(sandbox),
        headers={"Content-Type": JSON},
    )
    assert created.status_code == 200
    assert created.json()["status"] == 202
    token = created.json()["content"]["token"]
    processing = await cost_result(api, org.id, token, params={"envelope": "true"})
    assert processing.status_code == 200
    assert processing.json() == {"status": 102, "content": {}}
    ready = await cost_result(api, org.id, token, params={"envelope": "true"})
    assert ready.json()["status"] == 200
    assert ready.json()["content"]["usageDetails"]

    csv_response = await api.get(
        f"{API}/orgs/{org.id}/invoices/{org.closed[1].id}/csv",
        params={"envelope": "true"},
        headers={"Accept": CSV},
    )
    assert csv_response.text.startswith("Invoice Number,")


async def test_auth_failures_are_never_enveloped(sandbox: SandboxServer) -> None:
    async with client(sandbox) as http:
        response = await http.get(
            f"{API}/orgs/{org_ids(sandbox)[0]}/invoices", params={"envelope": "true"}
        )
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers


async def test_pretty_indents(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    org = first_org(sandbox)
    invoice_path = f"{API}/orgs/{org.id}/invoices/{org.closed[0].id}"
    compact = await api.get(invoice_path)
    pretty = await api.get(invoice_path, params={"pretty": "true"})
    both = await api.get(invoice_path, params={"pretty": "true", "envelope": "true"})
    assert "\n" not in compact.text
    assert pretty.text.startswith('{\n  "id": ')
    assert '\n  "lineItems": [\n    {\n      "sku": ' in pretty.text
    assert pretty.json() == compact.json()
    assert both.json() == {"status": 200, "content": compact.json()}
    assert '\n  "content": {\n    "id"' in both.text
    error = await api.get(f"{API}/orgs/{UNKNOWN_ORG}/invoices", params={"pretty": "true"})
    assert error.text.startswith('{\n  "error": 404')


# --- Cost Explorer -------------------------------------------------------------------


@pytest.mark.dates
async def test_cost_totals_equal_invoice_subtotals(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    sandbox.state.cost_polls_before_ready = 0
    org = first_org(sandbox)
    invoices = (await api.get(f"{API}/orgs/{org.id}/invoices")).json()["results"]
    subtotals = {i["startDate"][:10]: i["subtotalCents"] for i in invoices if i["subtotalCents"]}
    for group_by in (None, "services", "projects", "clusters", "organizations"):
        body = cost_body(sandbox, groupBy=group_by) if group_by else cost_body(sandbox)
        token = await start_cost_query(api, org.id, body)
        response = await cost_result(api, org.id, token)
        rows = json.loads(response.content, parse_float=Decimal)["usageDetails"]
        per_month: dict[str, int] = defaultdict(int)
        for row in rows:
            per_month[row["usageDate"]] += int(row["usageAmount"] * 100)
            assert row["organizationId"] == org.id
            assert row["organizationName"] == org.name
        assert per_month == subtotals, group_by
        if group_by in ("projects", "clusters"):
            assert any("projectId" in r for r in rows)
        if group_by == "clusters":
            assert any("clusterId" in r and "clusterName" in r for r in rows)


async def test_cost_filters_and_csv(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    sandbox.state.cost_polls_before_ready = 0
    org = first_org(sandbox)
    project = org.projects[0]
    token = await start_cost_query(
        api,
        org.id,
        cost_body(sandbox, groupBy="projects", projects=[project.id], services=["Storage"]),
    )
    rows = (await cost_result(api, org.id, token)).json()["usageDetails"]
    assert rows
    assert {(r["projectId"], r["service"]) for r in rows} == {(project.id, "Storage")}
    as_csv = await cost_result(api, org.id, token, headers={"Accept": CSV})
    assert as_csv.headers["content-type"] == CSV
    table = list(csv.reader(io.StringIO(as_csv.text)))
    assert table[0][:2] == ["Billed Date", "Invoice Id"]
    assert len(table) == len(rows) + 1


@pytest.mark.dates
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"endDate": "2025-02-01"}, "VALIDATION_ERROR"),
        ({"startDate": "2025-01-15", "endDate": "2025-02-01"}, "VALIDATION_ERROR"),
        ({"startDate": "01/01/2025", "endDate": "2025-02-01"}, "VALIDATION_ERROR"),
        ({"startDate": "soon", "endDate": "later"}, "VALIDATION_ERROR"),
        ({"groupBy": "regions"}, "VALIDATION_ERROR"),
        ({"projects": ["not-an-id"]}, "VALIDATION_ERROR"),
        ({"services": ["Coffee"]}, "VALIDATION_ERROR"),
        ({"includePartialMatches": "yes"}, "VALIDATION_ERROR"),
        ({"colour": "red"}, "INVALID_ATTRIBUTE"),
        ({"startDate": "NEXT", "endDate": "THIS"}, "INVALID_DATE_RANGE"),
        ({"startDate": "THIS", "endDate": "THIS"}, "INVALID_DATE_RANGE"),
        ({"startDate": "-25", "endDate": "THIS"}, "INVALID_DATE_RANGE"),
        ({"startDate": "THIS", "endDate": "+2"}, "INVALID_DATE_RANGE"),
    ],
)
async def test_cost_query_validation(
    sandbox: SandboxServer, raw: httpx.AsyncClient, body: dict, code: str
) -> None:
    today = sandbox.data.today
    words = {"THIS": 0, "NEXT": 1, "-25": -25, "+2": 2}
    full = {"startDate": "THIS", "endDate": "NEXT", **body}
    full = {
        k: add_months(today, words[v]).isoformat() if isinstance(v, str) and v in words else v
        for k, v in full.items()
    }
    full = {k: v for k, v in full.items() if k in body or k in ("startDate", "endDate")}
    if "startDate" not in body and "endDate" in body:
        full.pop("startDate")
    response = await raw.post(
        f"{API}/orgs/{org_ids(sandbox)[0]}/billing/costExplorer/usage",
        json=full,
        headers={"Content-Type": JSON},
    )
    error = assert_error(response, 400, code)
    if code == "VALIDATION_ERROR":
        assert error["badRequestDetail"]["fields"][0]["field"]


async def test_cost_query_needs_a_json_object(
    sandbox: SandboxServer, raw: httpx.AsyncClient
) -> None:
    for content in (b"{oops", b"[1, 2]", b""):
        response = await raw.post(
            f"{API}/orgs/{org_ids(sandbox)[0]}/billing/costExplorer/usage",
            content=content,
            headers={"Content-Type": JSON},
        )
        assert_error(response, 400, "INVALID_JSON")


@pytest.mark.dates
async def test_the_widest_accepted_range(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    today = sandbox.data.today
    body = {
        "startDate": add_months(today, -24).isoformat(),
        "endDate": add_months(today, 1).isoformat(),
    }
    await start_cost_query(api, org_ids(sandbox)[0], body)


async def test_tokens_differ_per_query(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    org_id = org_ids(sandbox)[0]
    first = await start_cost_query(api, org_id, cost_body(sandbox))
    second = await start_cost_query(api, org_id, cost_body(sandbox))
    assert first != second


# --- the 102 quirk -------------------------------------------------------------------


async def test_102_then_close_is_a_protocol_error(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    sandbox.state.cost_polls_before_ready = 2
    org_id = org_ids(sandbox)[0]
    token = await start_cost_query(api, org_id, cost_body(sandbox))
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            await cost_result(api, org_id, token)
    assert (await cost_result(api, org_id, token)).status_code == 200
    polls = sandbox.state.requests_for("getCostExplorerUsage")
    assert [r.status for r in polls] == [102, 102, 200]


async def test_102_then_silence_is_a_read_timeout(sandbox: SandboxServer) -> None:
    sandbox.state.processing_mode = "silence"
    org_id = org_ids(sandbox)[0]
    async with client(sandbox, digest(sandbox), read_timeout=0.5) as http:
        token = await start_cost_query(http, org_id, cost_body(sandbox))
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await cost_result(http, org_id, token)
        assert time.monotonic() - started < 5
        assert (await cost_result(http, org_id, token)).status_code == 200


def raw_exchange(base_url: str, request: bytes, *, timeout: float) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


@pytest.mark.parametrize("mode", ["close", "silence"])
async def test_102_on_the_wire_is_a_bare_head(sandbox: SandboxServer, mode: str) -> None:
    sandbox.state.processing_mode = mode
    org_id = org_ids(sandbox)[0]
    bearer = Bearer(await fetch_token(sandbox))
    async with client(sandbox, bearer) as http:
        token = await start_cost_query(http, org_id, cost_body(sandbox))
        authorization = f"Bearer {bearer.token}"
    request = (
        f"GET {API}/orgs/{org_id}/billing/costExplorer/usage/{token} HTTP/1.1\r\n"
        f"Host: x\r\nAccept: {JSON}\r\nAuthorization: {authorization}\r\n\r\n"
    ).encode()
    received = await asyncio.to_thread(raw_exchange, sandbox.base_url, request, timeout=0.5)
    head, separator, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 102 ")
    assert separator and rest == b""  # no chunked terminator, no second response
    assert b"content-length: 0" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert (b"connection: close" in head.lower()) == (mode == "close")


async def test_processing_mode_is_checked(sandbox: SandboxServer) -> None:
    with pytest.raises(ValueError):
        sandbox.state.processing_mode = "hang"


# --- rate limit ----------------------------------------------------------------------


async def test_rate_limit_is_a_token_bucket_per_org_and_endpoint_set(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    """Atlas's token buckets (https://www.mongodb.com/docs/atlas/api/api-rate-limit/): a
    capacity, one token per request, ``refillRate`` tokens added every
    ``refillDurationSeconds``, 429 + Retry-After (the seconds to the next refill) when empty."""
    now = [500.0]
    sandbox.state.clock = lambda: now[0]
    sandbox.state.set_switches(rate_limit=3, rate_refill=2, rate_refill_seconds=10)
    acme, staging = org_ids(sandbox)[:2]
    remaining = []
    for _ in range(3):
        response = await api.get(f"{API}/orgs/{acme}/invoices/pending")
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "3"
        remaining.append(response.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    now[0] += 2.5
    limited = await api.get(f"{API}/orgs/{acme}/invoices")  # the same endpoint set
    body = assert_error(limited, 429, "RATE_LIMITED_TOKEN_BUCKET")
    assert limited.headers["Retry-After"] == "8"  # 7.5 s to the refill, rounded up
    assert limited.headers["RateLimit-Remaining"] == "0"
    invoices = "api/atlas/v2/orgs/{orgId}/invoices"
    assert body["parameters"] == [invoices, 8, 3, 2, 10]
    assert body["detail"] == (
        f"Rate limit exceeded for {invoices}. Please retry after 8 seconds. "
        "Request capacity: 3. Refill rate: 2 per 10 seconds."
    )
    # Cost Explorer is another endpoint set, another org another scope: their own buckets.
    token = await start_cost_query(api, acme, cost_body(sandbox))
    assert len(token) == 64
    assert (await api.get(f"{API}/orgs/{staging}/invoices")).status_code == 200
    now[0] += 7.4
    assert (await api.get(f"{API}/orgs/{acme}/invoices")).headers["Retry-After"] == "1"
    now[0] += 0.1  # the refill: 2 tokens, not a whole new bucket of 3
    refilled = [await api.get(f"{API}/orgs/{acme}/invoices") for _ in range(3)]
    assert [r.status_code for r in refilled] == [200, 200, 429]
    assert [r.headers["RateLimit-Remaining"] for r in refilled] == ["1", "0", "0"]
    assert refilled[2].headers["Retry-After"] == "10"
    now[0] += 35  # three refills of 2, but never more than the capacity
    full = await api.get(f"{API}/orgs/{acme}/invoices")
    assert full.status_code == 200 and full.headers["RateLimit-Remaining"] == "2"
    statuses = [r.status for r in sandbox.state.requests_for(org_id=acme) if r.status != 401]
    assert statuses.count(429) == 3  # a 429 takes no token: it is not counted


async def test_rate_limit_headers_can_be_missing(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    """ "Atlas may not always return response headers" (the rate-limit page): a switch."""
    sandbox.state.set_switches(rate_limit=1, rate_headers=False)
    org_id = org_ids(sandbox)[0]
    answered = await api.get(f"{API}/orgs/{org_id}/invoices")
    assert answered.status_code == 200
    assert "RateLimit-Limit" not in answered.headers
    limited = await api.get(f"{API}/orgs/{org_id}/invoices")
    assert_error(limited, 429, "RATE_LIMITED_TOKEN_BUCKET")
    assert "RateLimit-Remaining" not in limited.headers
    assert int(limited.headers["Retry-After"]) > 0  # the one header a 429 always has


def test_rate_switches_are_checked(sandbox: SandboxServer) -> None:
    for name, bad in [("rate_limit", 0), ("rate_refill", 1.5), ("rate_refill_seconds", 0)]:
        with pytest.raises(ValueError):
            sandbox.state.set_switches(**{name: bad})
    sandbox.state.rate_window_seconds = 30  # the old name of rate_refill_seconds
    assert sandbox.state.rate_refill_seconds == 30


async def test_unauthenticated_requests_are_not_counted(sandbox: SandboxServer) -> None:
    sandbox.state.rate_limit = 1
    org_id = org_ids(sandbox)[0]
    async with client(sandbox) as anonymous:
        for _ in range(3):
            assert (await anonymous.get(f"{API}/orgs/{org_id}/invoices")).status_code == 401
    async with client(sandbox, digest(sandbox)) as http:
        assert (await http.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
        assert (await http.get(f"{API}/orgs/{org_id}/invoices")).status_code == 429


# --- latency and faults --------------------------------------------------------------


async def test_latency_switch(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    sandbox.state.latency_seconds = 0.3
    started = time.monotonic()
    await api.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices/pending")
    assert time.monotonic() - started >= 0.3


async def test_status_fault(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    org_id = org_ids(sandbox)[0]
    sandbox.state.add_fault(Fault("status", status=503, retry_after=7, times=2))
    for _ in range(2):
        response = await api.get(f"{API}/orgs/{org_id}/invoices")
        assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert response.headers["Retry-After"] == "7"
    assert (await api.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
    assert sandbox.state.faults == []


async def test_status_fault_with_a_custom_code_and_an_html_body(
    sandbox: SandboxServer, sandbox_session: SandboxServer
) -> None:
    org_id = org_ids(sandbox)[0]
    sandbox.state.add_fault(Fault("status", status=500, error_code="UNEXPECTED_ERROR"))
    sandbox.state.add_fault(Fault("status", status=502, body="<html>Bad gateway</html>"))
    async with client(sandbox, digest(sandbox), check_responses=False) as http:
        first = await http.get(f"{API}/orgs/{org_id}/invoices")
        second = await http.get(f"{API}/orgs/{org_id}/invoices")
    assert_error(first, 500, "UNEXPECTED_ERROR")
    assert second.status_code == 502
    assert second.headers["content-type"].startswith("text/html")
    assert second.text == "<html>Bad gateway</html>"
    with pytest.raises(ContractError):
        validate_response("GET", second.request.url, 502, second.headers, second.content)


async def test_fault_filters_by_operation_and_org(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    acme, staging = org_ids(sandbox)[:2]
    sandbox.state.add_fault(
        Fault("status", status=500, operation="listInvoicePending", org_id=staging, times=None)
    )
    assert (await api.get(f"{API}/orgs/{staging}/invoices")).status_code == 200
    assert (await api.get(f"{API}/orgs/{acme}/invoices/pending")).status_code == 200
    for _ in range(3):
        assert (await api.get(f"{API}/orgs/{staging}/invoices/pending")).status_code == 500
    assert sandbox.state.faults[0].hits == 3
    sandbox.state.clear_faults()
    assert (await api.get(f"{API}/orgs/{staging}/invoices/pending")).status_code == 200


async def test_digest_probe_does_not_use_up_a_fault(sandbox: SandboxServer) -> None:
    sandbox.state.add_fault(Fault("status", status=503))
    async with client(sandbox, digest(sandbox)) as http:
        response = await http.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices")
    assert response.status_code == 503
    assert [r.status for r in sandbox.state.requests] == [401, 503]


async def test_reset_fault_drops_the_connection(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    org_id = org_ids(sandbox)[0]
    sandbox.state.add_fault(Fault("reset", operation="getInvoice"))
    invoice_id = first_org(sandbox).closed[0].id
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await api.get(f"{API}/orgs/{org_id}/invoices/{invoice_id}")
    assert sandbox.state.requests[-1].status is None
    assert (await api.get(f"{API}/orgs/{org_id}/invoices/{invoice_id}")).status_code == 200


@pytest.mark.parametrize(
    ("kind", "message"),
    [("close", "without sending a response"), ("garbage", "illegal status line")],
)
async def test_close_and_garbage_faults_send_no_http_answer(
    sandbox: SandboxServer, api: httpx.AsyncClient, kind: str, message: str
) -> None:
    org_id = org_ids(sandbox)[0]
    sandbox.state.add_fault(Fault(kind, operation="listInvoices"))
    with pytest.raises(httpx.RemoteProtocolError, match=message):
        await api.get(f"{API}/orgs/{org_id}/invoices")
    assert sandbox.state.requests[-1].status is None
    assert (await api.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200


@pytest.mark.parametrize("kind", ["close", "garbage"])
async def test_close_and_garbage_are_what_a_client_reads(sandbox: SandboxServer, kind: str) -> None:
    """On the wire: nothing at all, or one line that is no status line, then the close."""
    org_id = org_ids(sandbox)[0]
    sandbox.state.add_fault(Fault(kind, operation="listInvoices"))
    request = (
        f"GET {API}/orgs/{org_id}/invoices HTTP/1.1\r\nHost: x\r\nAccept: {JSON}\r\n"
        f"Authorization: Bearer {await fetch_token(sandbox)}\r\n\r\n"
    ).encode()
    received = await asyncio.to_thread(raw_exchange, sandbox.base_url, request, timeout=5)
    assert received == (b"" if kind == "close" else b"HTTQ/1.1 200 OK\r\n\r\n")


async def test_malformed_fault(sandbox: SandboxServer) -> None:
    org = first_org(sandbox)
    invoice = org.closed[0]
    sandbox.state.add_fault(Fault("malformed", operation="listInvoices"))
    sandbox.state.add_fault(Fault("malformed", operation="getInvoiceCsv"))
    async with client(sandbox, digest(sandbox), check_responses=False) as http:
        listed = await http.get(f"{API}/orgs/{org.id}/invoices")
        as_csv = await http.get(
            f"{API}/orgs/{org.id}/invoices/{invoice.id}/csv", headers={"Accept": CSV}
        )
    assert listed.status_code == 200
    assert listed.headers["content-type"] == JSON
    with pytest.raises(ValueError):
        listed.json()
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"] == CSV
    with pytest.raises(csv.Error):
        list(csv.reader(io.StringIO(as_csv.text), strict=True))
    for response in (listed, as_csv):
        with pytest.raises(ContractError):
            validate_response("GET", response.request.url, 200, response.headers, response.content)


async def test_latency_fault(sandbox: SandboxServer, api: httpx.AsyncClient) -> None:
    org_id = org_ids(sandbox)[0]
    sandbox.state.add_fault(Fault("latency", seconds=0.3))
    started = time.monotonic()
    assert (await api.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await api.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200
    assert time.monotonic() - started < 0.3


async def test_expire_tokens_fault(sandbox: SandboxServer) -> None:
    org_id = org_ids(sandbox)[0]
    token = await fetch_token(sandbox)
    sandbox.state.add_fault(Fault("expire_tokens"))
    async with client(sandbox, Bearer(token)) as http:
        assert_error(await http.get(f"{API}/orgs/{org_id}/invoices"), 401, "UNAUTHORIZED")
    async with client(sandbox, Bearer(await fetch_token(sandbox))) as http:
        assert (await http.get(f"{API}/orgs/{org_id}/invoices")).status_code == 200


async def test_faults_on_the_token_endpoint(sandbox: SandboxServer) -> None:
    sandbox.state.add_fault(Fault("status", status=503, operation=OAUTH_TOKEN))
    creds = sandbox.state.credentials
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=False) as http:
        response = await http.post(
            "/api/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(creds.client_id, creds.client_secret),
        )
    assert response.status_code == 503
    assert await fetch_token(sandbox)


def test_fault_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Fault("explode")
    with pytest.raises(ValueError):
        Fault("status")
    with pytest.raises(ValueError):
        Fault("latency")
    with pytest.raises(ValueError):
        Fault("reset", operation="deleteEverything")
    with pytest.raises(ValueError):
        Fault("reset", times=0)


# --- request log and control endpoints -----------------------------------------------


async def test_request_log_records_what_was_sent(
    sandbox: SandboxServer, api: httpx.AsyncClient
) -> None:
    org_id = org_ids(sandbox)[0]
    sandbox.state.requests.clear()
    body = cost_body(sandbox, groupBy="services")
    await api.post(
        f"{API}/orgs/{org_id}/billing/costExplorer/usage",
        params={"pretty": "true"},
        json=body,
        headers={"Content-Type": JSON, "X-Trace": "abc"},
    )
    entry = sandbox.state.requests[-1]
    assert entry.method == "POST"
    assert entry.path == f"{API}/orgs/{org_id}/billing/costExplorer/usage"
    assert entry.query == {"pretty": "true"}
    assert entry.headers["x-trace"] == "abc"
    assert entry.headers["content-type"] == JSON
    assert json.loads(entry.body) == body
    assert entry.status == 202
    assert entry.operation == "createCostExplorerProcess"
    assert entry.org_id == org_id
    assert sandbox.state.requests_for(org_id=org_id)[-1] is entry


async def test_control_endpoints(sandbox: SandboxServer) -> None:
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=False) as http:
        info = (await http.get("/_sandbox/info")).json()
        assert [o["id"] for o in info["orgs"]] == list(org_ids(sandbox))
        assert info["credentials"]["client_id"] == sandbox.state.credentials.client_id
        assert info["hugeOrgId"] == sandbox.data.huge_org_id

        added = await http.post(
            "/_sandbox/faults", json={"kind": "status", "status": 500, "times": 2}
        )
        assert added.status_code == 201
        assert sandbox.state.faults[0].status == 500
        assert (await http.post("/_sandbox/faults", json={"kind": "nope"})).status_code == 400
        assert (
            await http.post("/_sandbox/faults", json={"kind": "reset", "x": 1})
        ).status_code == 400
        assert (await http.delete("/_sandbox/faults")).status_code == 204
        assert sandbox.state.faults == []

        switched = await http.post(
            "/_sandbox/switches", json={"rate_limit": 5, "pending_shape": "object"}
        )
        assert switched.json()["rate_limit"] == 5
        assert sandbox.state.pending_shape == "object"
        assert (await http.post("/_sandbox/switches", json={"warp": 9})).status_code == 400

        async with client(sandbox) as anonymous:
            await anonymous.get(f"{API}/orgs/{org_ids(sandbox)[0]}/invoices")
        logged = (await http.get("/_sandbox/requests")).json()
        assert [e["status"] for e in logged] == [401]
        assert (await http.post("/_sandbox/reset")).status_code == 204
        assert sandbox.state.rate_limit == 100
        assert sandbox.state.pending_shape == "list"
    assert sandbox.state.requests == []  # control requests are never logged


async def test_reset_restores_defaults(sandbox: SandboxServer) -> None:
    state = sandbox.state
    state.cost_polls_before_ready = 5
    state.latency_seconds = 2
    state.add_fault(Fault("reset"))
    state.reset()
    assert state.switches() == {
        "pending_shape": "list",
        "processing_mode": "close",
        "cost_polls_before_ready": 1,
        "token_ttl_seconds": 3600.0,
        "rate_limit": 100,
        "rate_refill": 100,
        "rate_refill_seconds": 60.0,
        "rate_headers": True,
        "latency_seconds": 0.0,
    }
    assert state.faults == [] and state.requests == []
