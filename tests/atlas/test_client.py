"""The Atlas client against the sandbox over real HTTP: operations, auth, errors, retries, 102."""

from __future__ import annotations

import asyncio
import io
from datetime import date

import httpcore
import httpx
import pytest

from bot.atlas import (
    AtlasClient,
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


# ---- Atlas's token buckets, against the sandbox ---------------------------------------------


def _limited(sandbox) -> list:
    return [r for r in api_requests(sandbox) if r.status == 429]


async def test_a_burst_beyond_the_capacity_waits_and_then_runs_at_the_refill_rate(
    sandbox, make_client, org, fake_time
):
    """Capacity 4, refill 2 per 60 s (the sandbox's buckets follow Atlas's rate-limit page):
    twelve reads in a row meet no 429; after the first four they go two a minute."""
    sandbox.state.clock = fake_time.clock  # Atlas's refills and the client's waits: one clock
    sandbox.state.set_switches(rate_limit=4, rate_refill=2, rate_refill_seconds=60)
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    started = fake_time.now
    done = []
    for _ in range(12):
        await client.pending_totals(org.id)
        done.append(fake_time.now - started)
    assert _limited(sandbox) == []
    assert done[:4] == [0, 0, 0, 0]
    assert done[4:] == [60, 60, 120, 120, 180, 180, 240, 240]  # 8 in 240 s: 2 per 60 s


async def test_a_concurrent_burst_waits_too(sandbox, make_client, org, virtual_time):
    """The same with all twelve at once: the first request learns the bucket, the rest
    follow Atlas's count, and after each refill one probe finds out how many may go."""
    sandbox.state.clock = virtual_time.clock
    sandbox.state.set_switches(rate_limit=4, rate_refill=2, rate_refill_seconds=60)
    client = make_client("oauth", sleep=virtual_time.sleep, clock=virtual_time.clock)
    started = virtual_time.now
    done = []

    async def read() -> None:
        await client.pending_totals(org.id)
        done.append(virtual_time.now - started)

    await virtual_time.gather(*(read() for _ in range(12)))
    assert _limited(sandbox) == []
    assert sorted(done) == [0, 0, 0, 0, 60, 60, 120, 120, 180, 180, 240, 240]


async def test_without_rate_limit_headers_the_default_bucket_keeps_within_atlas_example(
    sandbox, make_client, org, fake_time
):
    """Atlas may leave the headers out; its example bucket (10, 5 per 60 s) is the default."""
    sandbox.state.clock = fake_time.clock
    sandbox.state.set_switches(
        rate_limit=10, rate_refill=5, rate_refill_seconds=60, rate_headers=False
    )
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    for _ in range(25):
        await client.pending_totals(org.id)
    assert _limited(sandbox) == []
    assert fake_time.now - 10_000.0 == 180  # 10 at once, then 5 a minute


async def test_invoices_and_cost_explorer_have_separate_buckets(
    sandbox, make_client, org, fake_time
):
    sandbox.state.clock = fake_time.clock
    sandbox.state.set_switches(rate_limit=2, rate_refill=1, rate_refill_seconds=60)
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    for _ in range(2):
        await client.pending_totals(org.id)
    token = await _token(client, org, sandbox.data.today)  # not held back by the invoices
    assert len(token) == 64 and fake_time.slept == []


async def test_a_429_caused_by_another_process_teaches_the_refill(
    sandbox, make_client, org, fake_time
):
    """Another replica empties the bucket: the client meets one 429, learns the bucket from
    its body, waits Retry-After, and from then on sends the refill's worth without 429s."""
    sandbox.state.clock = fake_time.clock
    sandbox.state.set_switches(rate_limit=4, rate_refill=2, rate_refill_seconds=60)
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    other = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    await client.pending_totals(org.id)  # remaining 3
    for _ in range(3):
        await other.pending_totals(org.id)  # the other replica takes the rest
    fake_time.now += 10
    await client.pending_totals(org.id)  # 429, Retry-After 50, then the retry
    assert len(_limited(sandbox)) == 1
    assert fake_time.slept == [50]
    await client.pending_totals(org.id)  # the second token of that refill, no probe needed
    assert len(_limited(sandbox)) == 1 and fake_time.slept == [50]


async def test_max_wait_raises_rate_limited_instead_of_waiting_for_the_budget(
    sandbox, make_client, org, fake_time
):
    sandbox.state.clock = fake_time.clock
    sandbox.state.set_switches(rate_limit=1, rate_refill=1, rate_refill_seconds=60)
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    token = await _token(client, org, sandbox.data.today)
    sent = len(api_requests(sandbox))
    with pytest.raises(RateLimited) as err:
        await client.cost_result(org.id, token, max_wait=5)
    assert err.value.status == 429 and err.value.retry_after == 60
    assert "nothing was sent" in (err.value.detail or "")
    assert len(api_requests(sandbox)) == sent and fake_time.slept == []


async def test_max_wait_raises_rate_limited_instead_of_sleeping_out_a_long_retry_after(
    sandbox, make_client, org, fake_time
):
    client = make_client("oauth", sleep=fake_time.sleep, clock=fake_time.clock)
    token = await _token(client, org, sandbox.data.today)
    sandbox.state.add_fault(
        Fault(kind="status", status=429, retry_after=55, operation=Operation.GET_COST_RESULT)
    )
    with pytest.raises(RateLimited) as err:
        await client.cost_result(org.id, token, max_wait=5)
    assert err.value.retry_after == 55
    assert fake_time.slept == []
    fake_time.now += 55  # the job polls again after Retry-After
    sandbox.state.add_fault(
        Fault(kind="status", status=429, retry_after=3, operation=Operation.GET_COST_RESULT)
    )
    assert await client.cost_result(org.id, token, max_wait=5)  # a wait that fits is waited
    assert fake_time.slept == [3]


# ---- the poll's transport faults, on raw sockets ----------------------------------------------

ORG = "a" * 24
TOKEN = "b" * 64
READY = b'{"usageDetails": []}'
OK_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.atlas.2023-01-01+json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(READY)
)


class RawAtlas:
    """A loopback server answering each connection's request as ``answers`` says, in turn:
    ``close`` (no byte, FIN), ``reset`` (RST), ``garbage`` (no status line), ``102 close``,
    ``102 silence``, ``slow`` (the answer after ``delay`` s) or ``ok``."""

    def __init__(self, *answers: str, delay: float = 1.0) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.seen = 0
        self.url = ""
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawAtlas:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import socket
        import struct

        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            return
        answer = self.answers[min(self.seen, len(self.answers) - 1)]
        self.seen += 1
        if answer == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if answer == "garbage":
            writer.write(b"HTTQ/1.1 200 OK\r\n\r\n")
        elif answer.startswith("102"):
            writer.write(RAW_102)
        elif answer == "slow":
            await asyncio.sleep(self.delay)
            writer.write(OK_HEAD + READY)
        elif answer == "ok":
            writer.write(OK_HEAD + READY)
        await writer.drain()
        if answer == "102 silence":
            await self._release.wait()
        writer.close()


def _raw_client(url: str, fake_time, **options) -> AtlasClient:
    options.setdefault("max_retries", 2)
    return AtlasClient(
        base_url=url,
        poll_timeout=0.3,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        **options,
    )


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        ("close", "RemoteProtocolError"),
        ("garbage", "RemoteProtocolError"),
        ("reset", "ReadError"),
    ],
)
async def test_a_poll_transport_fault_is_retried_not_not_ready(fake_time, answer, cause):
    """Closed before any byte and a malformed status line used to read as "not ready" (the
    same httpx error as 102 then close), so a query could only expire after two hours."""
    async with RawAtlas(answer, "ok") as atlas:
        client = _raw_client(atlas.url, fake_time)
        try:
            result = await asyncio.wait_for(client.cost_result(ORG, TOKEN), 5)
            assert isinstance(result, CostResult) and atlas.seen == 2
        finally:
            await client.aclose()
    async with RawAtlas(answer) as atlas:
        client = _raw_client(atlas.url, fake_time)
        try:
            with pytest.raises(AtlasTransportError, match=f"after 3 attempt\\(s\\): {cause}"):
                await asyncio.wait_for(client.cost_result(ORG, TOKEN), 5)
            assert atlas.seen == 3
        finally:
            await client.aclose()


async def test_a_poll_to_a_closed_port_is_a_transport_error(fake_time):
    with socket_port() as port:
        pass
    client = _raw_client(f"http://127.0.0.1:{port}", fake_time, max_retries=1)
    try:
        with pytest.raises(AtlasTransportError, match="ConnectError"):
            await client.cost_result(ORG, TOKEN)
    finally:
        await client.aclose()


async def test_a_slow_first_byte_still_arrives(fake_time):
    """The answer comes after 1 s, longer than ``poll_timeout``: it is the result, not a 102
    followed by silence (which the poll used to assume of any silence past ``poll_timeout``)."""
    async with RawAtlas("slow", delay=1.0) as atlas:
        client = _raw_client(atlas.url, fake_time)
        try:
            result = await asyncio.wait_for(client.cost_result(ORG, TOKEN), 5)
        finally:
            await client.aclose()
    assert isinstance(result, CostResult) and atlas.seen == 1


async def test_a_first_byte_slower_than_poll_read_timeout_is_a_transport_error(fake_time):
    async with RawAtlas("slow", delay=2.0) as atlas:
        client = _raw_client(atlas.url, fake_time, poll_read_timeout=0.5, max_retries=0)
        try:
            with pytest.raises(AtlasTransportError, match="ReadTimeout"):
                await asyncio.wait_for(client.cost_result(ORG, TOKEN), 5)
        finally:
            await client.aclose()


@pytest.mark.parametrize("mode", ["close", "silence"])
async def test_102_then_close_or_silence_is_not_ready_within_poll_timeout(fake_time, mode):
    """Only after a 102 head is a close or silence "not ready", and after the head silence
    is waited out for ``poll_timeout`` (0.3 s), not the long ``poll_read_timeout``."""
    async with RawAtlas(f"102 {mode}") as atlas:
        client = _raw_client(atlas.url, fake_time, poll_read_timeout=5.0)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            result = await asyncio.wait_for(client.cost_result(ORG, TOKEN), 5)
            elapsed = loop.time() - started
        finally:
            await client.aclose()
    assert isinstance(result, NotReady) and atlas.seen == 1
    assert elapsed < 2.0


async def test_an_injected_client_without_atlas_transport_keeps_the_old_reading(fake_time):
    """Nothing watches its bytes, so a close after a 102 and one without cannot be told
    apart: both stay "not ready" (documented in docs/ATLAS-FAULTS.md)."""
    for answer in ("102 close", "close"):
        async with RawAtlas(answer) as atlas, httpx.AsyncClient(base_url=atlas.url) as http:
            client = AtlasClient(http_client=http, poll_timeout=0.3)
            assert isinstance(await client.cost_result(ORG, TOKEN), NotReady)
            assert client.poll_attempt_seconds == 0.6


@pytest.mark.parametrize("mode", sorted(TRANSPORT_102))
async def test_atlas_transport_sees_the_102_head(mode):
    """What cost_result relies on: the transport's watch notices the interim head."""
    from bot.atlas import AtlasTransport
    from bot.atlas._transport import Watch, watching

    async with RawAtlas(f"102 {mode}") as atlas:
        watch = Watch(after_1xx_timeout=0.3)
        async with httpx.AsyncClient(transport=AtlasTransport(), timeout=5) as http:
            with watching(watch), pytest.raises(TRANSPORT_102[mode]):
                await http.get(f"{atlas.url}/usage")
    assert watch.observed and watch.interim == 102


async def test_a_cancelled_request_leaves_nothing_in_flight(fake_time):
    """A request cancelled mid-flight (a job stopping) must not stay counted as in flight:
    the budget takes requests in flight off what Atlas says is left, for good if it leaked."""
    async with RawAtlas("slow", delay=2.0) as atlas:
        client = _raw_client(atlas.url, fake_time)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.cost_result(ORG, TOKEN), 0.3)
            buckets = client._budget._buckets
            assert buckets and all(not bucket.in_flight for bucket in buckets.values())
        finally:
            await client.aclose()
