"""The Atlas client against the sandbox over real HTTP: operations, auth, errors, retries, 102."""

from __future__ import annotations

import asyncio
import io
from datetime import date

import httpcore
import httpx
import pytest

from bot.atlas import (
    AtlasTransportError,
    BadRequest,
    Conflict,
    CostQuery,
    CostResult,
    Forbidden,
    InvalidInput,
    MalformedResponse,
    NotFound,
    NotReady,
    Operation,
    RateLimited,
    ServerError,
    ServiceAccountAuth,
    Unauthorized,
    media_type,
)
from bot.atlas.invoice_csv import summarise_invoice_csv
from bot.sandbox import OAUTH_TOKEN, Fault
from tests.atlas.conftest import api_requests, assert_all_requests_in_spec
from tests.fakes import clock

AUTHS = ["oauth", "digest"]


def _months_back(today: date, n: int) -> date:
    year, month = today.year, today.month - n
    while month < 1:
        year, month = year - 1, month + 12
    return date(year, month, 1)


@pytest.fixture
def org(sandbox):
    return sandbox.data.org(sandbox.data.org_ids[0])


# ---- every operation under both auth methods ------------------------------------------------


@pytest.mark.as_of(day=15)  # a day with month-to-date usage
@pytest.mark.parametrize("auth", AUTHS)
async def test_pending_invoices(sandbox, make_client, org, auth):
    client = make_client(auth)
    invoices = await client.pending_invoices(org.id)
    assert len(invoices) == 1
    pending = invoices[0]
    assert pending.status_name == "PENDING"
    assert pending.usage_cents == pending.subtotal_cents > 0
    assert pending.payments == ()
    assert_all_requests_in_spec(sandbox)
    for r in api_requests(sandbox):
        assert r.headers["accept"] == media_type(Operation.LIST_PENDING)


@pytest.mark.dates
@pytest.mark.as_of(day=1)
async def test_pending_invoice_on_the_first_of_the_month_has_no_usage_yet(make_client, org):
    [pending] = await make_client("oauth").pending_invoices(org.id)
    assert pending.start_date.date() == clock.day_of(1) and pending.status_name == "PENDING"
    assert (pending.usage_cents, pending.subtotal_cents, pending.line_items) == (0, 0, ())


async def test_pending_invoice_as_a_bare_object_is_accepted(sandbox, make_client, org):
    sandbox.state.pending_shape = "object"
    invoices = await make_client(check_responses=False).pending_invoices(org.id)
    assert [i.status_name for i in invoices] == ["PENDING"]


@pytest.mark.parametrize("auth", AUTHS)
async def test_invoice_json_has_exact_money_and_the_owed_formula(sandbox, make_client, org, auth):
    client = make_client(auth)
    closed = org.latest_closed
    invoice = await client.invoice(org.id, closed.id)
    assert invoice.id == closed.id
    assert invoice.usage_cents == invoice.subtotal_cents == closed.subtotal_cents
    assert invoice.amount_billed_cents == invoice.subtotal_cents + invoice.sales_tax_cents
    assert invoice.owed_cents == invoice.amount_billed_cents - invoice.starting_balance_cents
    assert all(isinstance(i.total_price_cents, int) for i in invoice.line_items)
    assert_all_requests_in_spec(sandbox)


@pytest.mark.parametrize("auth", AUTHS)
async def test_invoice_list_pages_through_everything(sandbox, make_client, org, auth):
    client = make_client(auth)
    seen = [i async for i in await client.invoices(org.id, items_per_page=2)]
    assert len(seen) == 7  # six closed months and the pending one
    assert len({i.id for i in seen}) == 7
    pages = [r for r in api_requests(sandbox) if r.operation == Operation.LIST_INVOICES]
    assert [r.query["pageNum"] for r in pages if r.status == 200] == ["1", "2", "3", "4"]
    limited = [i async for i in await client.invoices(org.id, items_per_page=5, limit=3)]
    assert len(limited) == 3
    assert_all_requests_in_spec(sandbox)


@pytest.mark.parametrize("auth", AUTHS)
async def test_invoice_csv_streams_and_matches_the_json(sandbox, make_client, org, auth):
    client = make_client(auth, check_responses=False)
    closed = org.latest_closed
    sink = io.BytesIO()
    size = await client.download_invoice_csv(org.id, closed.id, sink)
    assert size == len(sink.getvalue()) > 0
    summary = summarise_invoice_csv(io.StringIO(sink.getvalue().decode(), newline=""))
    invoice = await client.invoice(org.id, closed.id)
    assert summary.total_cents == invoice.usage_cents
    assert summary.row_count == len(invoice.line_items)
    csv_requests = [r for r in api_requests(sandbox) if r.operation == Operation.GET_INVOICE_CSV]
    assert csv_requests[-1].headers["accept"] == media_type(Operation.GET_INVOICE_CSV, "csv")
    assert_all_requests_in_spec(sandbox)


@pytest.mark.parametrize("auth", AUTHS)
async def test_cost_explorer_create_then_poll(sandbox, make_client, org, auth):
    sandbox.state.cost_polls_before_ready = 2
    client = make_client(auth)
    today = sandbox.data.today
    query = CostQuery(
        start=_months_back(today, 3), end=_months_back(today, 0), organizations=(org.id,)
    )
    token = await client.create_cost_query(org.id, query)
    assert len(token) == 64
    assert isinstance(await client.cost_result(org.id, token), NotReady)
    assert isinstance(await client.cost_result(org.id, token), NotReady)
    result = await client.cost_result(org.id, token)
    assert isinstance(result, CostResult)
    months = result.cents_by("months")
    expected = {inv.start.strftime("%Y-%m"): inv.subtotal_cents for inv in org.closed[:3]}
    assert months == expected
    assert_all_requests_in_spec(sandbox)


# ---- OAuth token life cycle -------------------------------------------------------------------


def _token_requests(sandbox) -> int:
    return len(sandbox.state.requests_for(OAUTH_TOKEN))


async def test_concurrent_requests_share_one_token_fetch(sandbox, make_client, org):
    client = make_client("oauth")
    await asyncio.gather(*(client.pending_invoices(org.id) for _ in range(10)))
    assert _token_requests(sandbox) == 1


async def test_token_is_refreshed_before_it_expires(sandbox, make_client, org, fake_time):
    creds = sandbox.data.credentials
    auth = ServiceAccountAuth(
        creds.client_id, creds.client_secret, refresh_margin=60, clock=fake_time.clock
    )
    client = make_client("oauth")
    client._auth = auth
    auth.bind(client._http)
    await client.pending_invoices(org.id)
    fake_time.now += 3600 - 61  # still fresh
    await client.pending_invoices(org.id)
    assert _token_requests(sandbox) == 1
    fake_time.now += 2  # inside the refresh margin
    await client.pending_invoices(org.id)
    assert _token_requests(sandbox) == 2


async def test_a_401_fetches_a_new_token_and_retries_once(sandbox, make_client, org):
    client = make_client("oauth")
    await client.pending_invoices(org.id)
    sandbox.state.expire_tokens()  # Atlas revoked it before its time
    invoices = await client.pending_invoices(org.id)
    assert invoices and _token_requests(sandbox) == 2


async def test_wrong_service_account_secret_is_unauthorized(sandbox, make_client, org):
    client = make_client("oauth")
    client._auth._client_secret = "not-the-secret"
    with pytest.raises(Unauthorized):
        await client.pending_invoices(org.id)
    assert api_requests(sandbox) == []


async def test_wrong_api_key_is_unauthorized(sandbox, make_client, org):
    client = make_client("digest")
    client._auth._password = b"wrong"
    with pytest.raises(Unauthorized) as err:
        await client.pending_invoices(org.id)
    assert err.value.status == 401 and err.value.error_code


async def test_key_without_billing_role_is_forbidden(sandbox, make_client, org):
    with pytest.raises(Forbidden) as err:
        await make_client("no-role").pending_invoices(org.id)
    assert err.value.error_code == "USER_UNAUTHORIZED"


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc", "code"),
    [
        (400, BadRequest, "INVALID_PARAMETER"),
        (401, Unauthorized, "UNAUTHORIZED"),
        (403, Forbidden, "USER_UNAUTHORIZED"),
        (404, NotFound, "RESOURCE_NOT_FOUND"),
        (409, Conflict, "CONFLICT"),
        (429, RateLimited, "RATE_LIMITED"),
        (500, ServerError, "UNEXPECTED_ERROR"),
        (503, ServerError, "SERVICE_UNAVAILABLE"),
    ],
)
async def test_every_error_status_becomes_a_typed_error(
    sandbox, make_client, org, fake_time, status, exc, code
):
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=status,
            error_code=code,
            operation=Operation.LIST_PENDING,
            times=None,
        )
    )
    # ATLAS-NOTES lists 409 for Atlas in general; the billing spec subset does not.
    client = make_client(
        "digest",
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        max_retries=2,
        check_responses=status != 409,
    )
    with pytest.raises(exc) as err:
        await client.pending_invoices(org.id)
    assert err.value.status == status
    assert err.value.error_code == code
    assert err.value.detail
    sent = [r for r in api_requests(sandbox) if r.status == status]
    # 429 and 5xx are retried (bounded); a 401 is answered once more by the auth flow
    # (Digest's challenge-response); the rest are not retried.
    expected = {429: 3, 500: 3, 503: 3, 401: 2}.get(status, 1)
    assert len(sent) == expected


async def test_retry_after_is_honoured(sandbox, make_client, org, fake_time):
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=429,
            error_code="RATE_LIMITED",
            retry_after=7,
            operation=Operation.LIST_PENDING,
        )
    )
    client = make_client("digest", sleep=fake_time.sleep, clock=fake_time.clock)
    assert await client.pending_invoices(org.id)
    assert 7 in fake_time.slept
    assert sum(fake_time.slept) < 14  # waited once, not once in the client and again in the budget


async def test_retries_stop_at_the_total_deadline(sandbox, make_client, org, fake_time):
    sandbox.state.add_fault(
        Fault(
            kind="status", status=503, retry_after=40, operation=Operation.LIST_PENDING, times=None
        )
    )
    client = make_client(
        "digest", sleep=fake_time.sleep, clock=fake_time.clock, max_retries=10, max_retry_seconds=60
    )
    with pytest.raises(ServerError) as err:
        await client.pending_invoices(org.id)
    assert err.value.retry_after == 40
    assert sum(fake_time.slept) <= 60


async def test_server_error_then_success_is_retried(sandbox, make_client, org, fake_time):
    sandbox.state.add_fault(Fault(kind="status", status=502, operation=Operation.GET_INVOICE))
    # A 502 comes from a proxy in front of Atlas, so the spec does not list it.
    client = make_client(
        "oauth", sleep=fake_time.sleep, clock=fake_time.clock, check_responses=False
    )
    invoice = await client.invoice(org.id, org.latest_closed.id)
    assert invoice.id == org.latest_closed.id
    statuses = [r.status for r in api_requests(sandbox) if r.operation == Operation.GET_INVOICE]
    assert statuses == [502, 200]


async def test_connection_reset_is_retried_then_reported(sandbox, make_client, org, fake_time):
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    sandbox.state.add_fault(Fault(kind="reset", operation=Operation.LIST_PENDING))
    assert await client.pending_invoices(org.id)
    sandbox.state.add_fault(Fault(kind="reset", operation=Operation.LIST_PENDING, times=None))
    with pytest.raises(AtlasTransportError, match="no answer from Atlas after 3 attempt"):
        await client.pending_invoices(org.id)


async def test_non_json_error_body_still_gives_status_and_detail(
    sandbox, make_client, org, fake_time
):
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=502,
            body="<html><body>Bad Gateway</body></html>",
            content_type="text/html",
            operation=Operation.LIST_PENDING,
            times=None,
        )
    )
    client = make_client(
        "digest", sleep=fake_time.sleep, clock=fake_time.clock, check_responses=False
    )
    with pytest.raises(ServerError) as err:
        await client.pending_invoices(org.id)
    assert err.value.status == 502 and err.value.error_code is None
    assert "Bad Gateway" in err.value.detail


async def test_malformed_json_is_a_malformed_response(sandbox, make_client, org):
    sandbox.state.add_fault(Fault(kind="malformed", operation=Operation.GET_INVOICE))
    with pytest.raises(MalformedResponse, match="not valid JSON"):
        await make_client("oauth", check_responses=False).invoice(org.id, org.latest_closed.id)


async def test_budget_waits_instead_of_exceeding_the_rate_limit(
    sandbox, make_client, org, fake_time
):
    sandbox.state.rate_limit = 3
    sandbox.state.clock = fake_time.clock  # the sandbox's window turns with the same clock
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    for _ in range(5):
        await client.pending_invoices(org.id)
    statuses = [r.status for r in api_requests(sandbox)]
    assert 429 not in statuses and statuses.count(200) == 5
    assert fake_time.slept and max(fake_time.slept) <= 60


# ---- Cost Explorer's 102 ---------------------------------------------------------------------


async def _token(client, org, today):
    query = CostQuery(start=_months_back(today, 2), end=_months_back(today, 0))
    return await client.create_cost_query(org.id, query)


@pytest.mark.dates
@pytest.mark.parametrize("mode", ["close", "silence"])
async def test_102_then_close_or_silence_is_not_ready(sandbox, make_client, org, mode):
    sandbox.state.processing_mode = mode
    client = make_client("oauth", poll_timeout=0.5)
    token = await _token(client, org, sandbox.data.today)
    outcome = await asyncio.wait_for(client.cost_result(org.id, token), timeout=5)
    assert isinstance(outcome, NotReady)
    polls = [r for r in api_requests(sandbox) if r.operation == Operation.GET_COST_RESULT]
    assert len(polls) == 1  # "not ready" is never retried by the client itself
    assert isinstance(await client.cost_result(org.id, token), CostResult)


async def test_102_in_an_envelope_is_not_ready(sandbox, make_client, org):
    client = make_client("oauth", envelope=True)
    token = await _token(client, org, sandbox.data.today)
    assert isinstance(await client.cost_result(org.id, token), NotReady)
    assert isinstance(await client.cost_result(org.id, token), CostResult)


@pytest.mark.parametrize("body", ["{}", '{"usageDetails": []}'])
async def test_empty_results_are_ready_and_empty(sandbox, make_client, org, body):
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=200,
            body=body,
            content_type=media_type(Operation.GET_COST_RESULT),
            operation=Operation.GET_COST_RESULT,
        )
    )
    client = make_client("oauth")
    token = await _token(client, org, sandbox.data.today)
    result = await client.cost_result(org.id, token)
    assert isinstance(result, CostResult) and result.rows == () and result.total_cents == 0


async def test_unknown_token_is_not_found(sandbox, make_client, org):
    with pytest.raises(NotFound):
        await make_client("oauth").cost_result(org.id, "a" * 64)


# ---- envelope and pretty -----------------------------------------------------------------------


async def test_envelope_and_pretty_give_the_same_results(sandbox, make_client, org):
    plain = make_client("oauth")
    wrapped = make_client("oauth", envelope=True, pretty=True)
    assert await plain.pending_invoices(org.id) == await wrapped.pending_invoices(org.id)
    closed = org.latest_closed.id
    assert await plain.invoice(org.id, closed) == await wrapped.invoice(org.id, closed)
    flagged = [r for r in api_requests(sandbox) if r.query.get("envelope") == "true"]
    assert flagged and all(r.query.get("pretty") == "true" for r in flagged)
    with pytest.raises(NotFound):
        await wrapped.invoice(org.id, "f" * 24)


# ---- validation before sending -----------------------------------------------------------------

BAD_IDS = [
    "",
    "abc",
    "A" * 24,
    "g" * 24,
    "a" * 23,
    "a" * 25,
    "../" + "a" * 21,
    "a" * 21 + "%2F",
    "٠" * 24,
    "a" * 12 + " " + "a" * 11,
]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_invalid_ids_are_refused_before_sending(sandbox, make_client, org, bad):
    client = make_client("oauth")
    closed = org.latest_closed.id
    calls = [
        client.pending_invoices(bad),
        client.invoice(bad, closed),
        client.invoice(org.id, bad),
        client.cost_result(bad, "a" * 64),
        client.create_cost_query(bad, CostQuery(start=date(2024, 1, 1), end=date(2024, 2, 1))),
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            await call
    with pytest.raises(InvalidInput):
        await client.invoices(bad)
    with pytest.raises(InvalidInput):
        async with client.invoice_csv(org.id, bad):
            pass
    assert sandbox.state.requests == []


@pytest.mark.parametrize(
    "query",
    [
        CostQuery(start=date(2024, 1, 2), end=date(2024, 2, 1)),
        CostQuery(start=date(2024, 1, 1), end=date(2024, 2, 15)),
        CostQuery(start=date(2024, 3, 1), end=date(2024, 2, 1)),
        CostQuery(start=date(2024, 3, 1), end=date(2024, 3, 1)),
        CostQuery(start=date(2024, 1, 1), end=date(2024, 2, 1), group_by="regions"),
        CostQuery(start=date(2024, 1, 1), end=date(2024, 2, 1), projects=("nope",)),
        CostQuery(start=date(2024, 1, 1), end=date(2024, 2, 1), services=("Lasers",)),
    ],
)
async def test_invalid_cost_queries_are_refused_before_sending(sandbox, make_client, org, query):
    with pytest.raises(InvalidInput):
        await make_client("oauth").create_cost_query(org.id, query)
    with pytest.raises(InvalidInput):
        await make_client("oauth").cost_result(org.id, "short")
    assert sandbox.state.requests == []


async def test_connection_refused_is_a_transport_error(fake_time):
    from bot.atlas import AtlasClient

    with socket_port() as port:
        pass  # the port is free again: nothing listens there
    client = AtlasClient(
        base_url=f"http://127.0.0.1:{port}",
        max_retries=1,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    )
    try:
        with pytest.raises(AtlasTransportError, match="ConnectError"):
            await client.pending_invoices("a" * 24)
    finally:
        await client.aclose()


def socket_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def bound():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        try:
            yield sock.getsockname()[1]
        finally:
            sock.close()

    return bound()


# What `AtlasClient.cost_result` relies on: httpcore swallows a 1xx and keeps reading, so a bare
# `102 Processing` as the final answer reaches httpx as the server closing the connection or as
# silence. A raw socket server sends exactly those bytes (no ASGI server in between), and the
# guard fails, naming the installed versions, only when that behaviour changes.
RAW_102 = b"HTTP/1.1 102 Processing\r\nContent-Length: 0\r\n\r\n"
TRANSPORT_102 = {"close": httpx.RemoteProtocolError, "silence": httpx.ReadTimeout}


@pytest.mark.parametrize("mode", sorted(TRANSPORT_102))
async def test_a_bare_102_still_reaches_httpx_as_the_client_expects(mode):
    release = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RAW_102)
        await writer.drain()
        if mode == "silence":
            await release.wait()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    expected = TRANSPORT_102[mode]
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as client:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/usage/token")
                outcome: object = f"a response with status {response.status_code}"
            except httpx.HTTPError as exc:
                outcome = exc
    finally:
        release.set()
        server.close()
        await server.wait_closed()
    versions = f"httpx {httpx.__version__}, httpcore {httpcore.__version__}"
    assert isinstance(outcome, expected), (
        f"a bare 102 then {mode} now surfaces as {outcome!r} under {versions}, not as "
        f"{expected.__name__}: AtlasClient.cost_result's not-ready handling must follow it"
    )


async def test_pending_totals_skip_line_items_but_keep_the_amounts(sandbox, make_client, org):
    client = make_client("oauth")
    [full] = await client.pending_invoices(org.id)
    [totals] = await client.pending_totals(org.id)
    assert totals.id == full.id
    assert totals.subtotal_cents == full.usage_cents == org.pending.subtotal_cents
    assert not hasattr(totals, "line_items")
