"""Every cell of docs/ATLAS-FAULTS.md, driven against the sandbox over real HTTP.

``TABLE`` below is the one source of the expected outcomes: each (fault, operation)
cell is run twice, with a transient fault (``times=1``: the first matching request
only) and a persistent one (``times=None``), and ``test_the_doc_lists_the_same_cells``
parses the Markdown table so the doc and this file cannot drift apart.

The mechanisms themselves (Retry-After, the total deadline, envelope, Digest, typed
errors for every status) have focused tests in ``test_client.py``; this file is the
whole fault × operation grid. Time: ``fake_time`` drives backoff and Retry-After (no
real waiting) and every call runs under ``asyncio.wait_for``, so a hang fails the
cell instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import re
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

import httpx
import pytest

from bot.atlas import (
    AtlasAPIError,
    AtlasClient,
    AtlasTransportError,
    CostQuery,
    CostResult,
    Forbidden,
    MalformedResponse,
    NotFound,
    NotReady,
    Operation,
    RateLimited,
    ServerError,
    ServiceAccountAuth,
    Unauthorized,
)
from bot.atlas.invoice_csv import InvoiceCsvError, summarise_invoice_csv
from bot.sandbox import OAUTH_TOKEN, Fault
from tests.doc_tables import fault_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "ATLAS-FAULTS.md"

MAX_RETRIES = 2  # what the table's clients are built with (make_client's default too)
ATTEMPTS = MAX_RETRIES + 1  # requests a persistent retryable fault takes
TIMEOUT = 0.3  # client read time-out in the time-out and 102 rows
POLL_TIMEOUT = 0.3  # AtlasClient(poll_timeout=...)
LATENCY = 1.0  # the "read time-out" fault: longer than both
RETRY_AFTER = 7  # seconds, in the 503 and 429 faults
BOUND = 5.0  # seconds: asyncio.wait_for around every call

PENDING = Operation.LIST_PENDING
INVOICE = Operation.GET_INVOICE
CSV = Operation.GET_INVOICE_CSV
LIST = Operation.LIST_INVOICES
CREATE = Operation.CREATE_COST_QUERY
POLL = Operation.GET_COST_RESULT
OPERATIONS = (PENDING, INVOICE, CSV, LIST, CREATE, POLL)

FAULTS = (
    "500",
    "502",
    "503 + Retry-After",
    "429 + Retry-After",
    "connection reset",
    "closed before any byte",
    "malformed status line",
    "read time-out",
    "malformed JSON",
    "malformed CSV",
    "102 then close",
    "102 then silence",
    "expired token",
    "401",
    "403",
    "404",
)


# ---- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One documented outcome.

    kind: ``retried`` (backoff loop: up to ``max_retries + 1`` attempts within
    ``max_retry_seconds``), ``retried once`` (the service account's auth flow: a new
    token, one more attempt), ``reported`` (raised at once, never retried), ``not
    ready`` (the poll answers ``NotReady``; the caller polls again later) or ``n/a``
    (the fault cannot happen for that operation; ``anyway`` is what the client does
    if it came all the same). ``error``/``status``/``code``: how a persistent fault
    ends; ``attempts``: the requests it takes to get there.
    """

    kind: str
    error: type[Exception] | None = None
    status: int | None = None
    code: str | None = None
    attempts: int = 1
    anyway: Cell | None = None

    def text(self) -> str:
        """The cell as written in docs/ATLAS-FAULTS.md."""
        if self.kind == "n/a":
            assert self.anyway is not None
            return f"n/a; if it came: {self.anyway.text()}"
        if self.kind == "not ready":
            return "not ready"
        assert self.error is not None
        what = " ".join(str(p) for p in (self.error.__name__, self.status, self.code) if p)
        return (
            f"{self.kind} → `{what}`" if self.kind.startswith("retried") else f"reported: `{what}`"
        )

    @property
    def effective(self) -> Cell:
        """What the test drives: the cell itself, or for n/a what happens anyway."""
        return self.anyway if self.anyway is not None else self


def _retried(error: type[Exception], status: int | None = None, code: str | None = None) -> Cell:
    return Cell("retried", error, status, code, attempts=ATTEMPTS)


def _reported(error: type[Exception], status: int | None = None, code: str | None = None) -> Cell:
    return Cell("reported", error, status, code)


def _na(anyway: Cell) -> Cell:
    return Cell("n/a", anyway=anyway)


def _every(cell: Cell, **by_op: Cell) -> dict[Operation, Cell]:
    row = dict.fromkeys(OPERATIONS, cell)
    row.update({Operation[name]: c for name, c in by_op.items()})
    return row


TRANSPORT = _retried(AtlasTransportError)
NOT_READY = Cell("not ready")
NEW_TOKEN = Cell("retried once", Unauthorized, 401, "UNAUTHORIZED", attempts=2)
BAD_JSON = _reported(MalformedResponse, 200, "MALFORMED_RESPONSE")
BAD_JSON_202 = _reported(MalformedResponse, 202, "MALFORMED_RESPONSE")
BAD_CSV = _reported(InvoiceCsvError)

ROWS: dict[str, dict[Operation, Cell]] = {
    "500": _every(_retried(ServerError, 500, "UNEXPECTED_ERROR")),
    "502": _every(_retried(ServerError, 502, "BAD_GATEWAY")),
    "503 + Retry-After": _every(_retried(ServerError, 503, "SERVICE_UNAVAILABLE")),
    "429 + Retry-After": _every(_retried(RateLimited, 429, "RATE_LIMITED")),
    "connection reset": _every(TRANSPORT),
    "closed before any byte": _every(TRANSPORT),
    "malformed status line": _every(TRANSPORT),
    "read time-out": _every(TRANSPORT),
    "malformed JSON": _every(
        BAD_JSON, CREATE_COST_QUERY=BAD_JSON_202, GET_INVOICE_CSV=_na(BAD_CSV)
    ),
    "malformed CSV": _every(
        _na(BAD_JSON), CREATE_COST_QUERY=_na(BAD_JSON_202), GET_INVOICE_CSV=BAD_CSV
    ),
    "102 then close": _every(_na(TRANSPORT), GET_COST_RESULT=NOT_READY),
    "102 then silence": _every(_na(TRANSPORT), GET_COST_RESULT=NOT_READY),
    "expired token": _every(NEW_TOKEN),
    "401": _every(NEW_TOKEN),
    "403": _every(_reported(Forbidden, 403, "USER_UNAUTHORIZED")),
    "404": _every(_reported(NotFound, 404, "RESOURCE_NOT_FOUND")),
}
TABLE: dict[tuple[str, Operation], Cell] = {
    (fault, op): cell for fault, row in ROWS.items() for op, cell in row.items()
}
assert tuple(ROWS) == FAULTS


# ---- driving one operation -------------------------------------------------------------------


@dataclass
class Ctx:
    org_id: str
    invoice_id: str
    query: CostQuery
    token: str | None = None


def _months_back(today: date, n: int) -> date:
    year, month = today.year, today.month - n
    while month < 1:
        year, month = year - 1, month + 12
    return date(year, month, 1)


def _ctx(sandbox) -> Ctx:
    org = sandbox.data.org(sandbox.data.org_ids[0])
    today = sandbox.data.today
    query = CostQuery(start=_months_back(today, 2), end=_months_back(today, 0))
    return Ctx(org.id, org.latest_closed.id, query)


async def _call(client: AtlasClient, op: Operation, ctx: Ctx) -> Any:
    """One operation as the bot uses it; the CSV is downloaded and then summarised."""
    if op is PENDING:
        return await client.pending_invoices(ctx.org_id)
    if op is INVOICE:
        return await client.invoice(ctx.org_id, ctx.invoice_id)
    if op is CSV:
        sink = io.BytesIO()
        await client.download_invoice_csv(ctx.org_id, ctx.invoice_id, sink)
        return summarise_invoice_csv(io.StringIO(sink.getvalue().decode(), newline=""))
    if op is LIST:
        return [i async for i in await client.invoices(ctx.org_id)]
    if op is CREATE:
        return await client.create_cost_query(ctx.org_id, ctx.query)
    assert ctx.token is not None
    return await client.cost_result(ctx.org_id, ctx.token)


def _succeeded(op: Operation, result: Any, ctx: Ctx) -> bool:
    if op is PENDING:
        return [i.status_name for i in result] == ["PENDING"]
    if op is INVOICE:
        return result.id == ctx.invoice_id
    if op is CSV:
        return result.row_count > 0
    if op is LIST:
        return len(result) == 7  # six closed months and the pending one
    if op is CREATE:
        return isinstance(result, str) and len(result) == 64
    return isinstance(result, CostResult) and len(result.rows) > 0


def _limit(fault: str) -> float:
    """The wall-clock bound of one call: the configured read time-outs, plus slack."""
    if fault in ("read time-out", "102 then silence"):
        return ATTEMPTS * TIMEOUT + 1.5
    return BOUND


async def _bounded(fault: str, coro) -> Any:
    """Run a call; a hang past the configured deadlines fails the test (TimeoutError)."""
    return await asyncio.wait_for(coro, _limit(fault))


# Bodies for the n/a "if it came anyway" cells.
JSON_INSTEAD_OF_CSV = b'{"links":[{"rel":"self","href":"https://cloud.mongodb.com/api/atl'
CSV_INSTEAD_OF_JSON = b'Invoice Number,abc,\n\nDate,Usage Date,Description\n"unterminated,05/'


class _FaultTarget(TypedDict):
    """The ``Fault`` fields every cell's fault shares: which operation, how many times."""

    operation: str | None
    times: int | None


def _install(state, fault: str, op: Operation, times: int | None) -> Fault | None:
    """Set the sandbox's fault switches for one cell; the Fault (its ``hits``) or None."""
    common: _FaultTarget = {"operation": op.value, "times": times}
    statuses = {"500": 500, "502": 502, "401": 401, "403": 403, "404": 404}
    if fault in statuses:
        made = Fault(kind="status", status=statuses[fault], **common)
    elif fault in ("503 + Retry-After", "429 + Retry-After"):
        made = Fault(kind="status", status=int(fault[:3]), retry_after=RETRY_AFTER, **common)
    elif fault == "connection reset":
        made = Fault(kind="reset", **common)
    elif fault == "closed before any byte":
        made = Fault(kind="close", **common)
    elif fault == "malformed status line":
        made = Fault(kind="garbage", **common)
    elif fault == "read time-out":
        made = Fault(kind="latency", seconds=LATENCY, **common)
    elif fault == "malformed JSON":
        # The sandbox's own malformed body follows the media type asked for (CSV for the CSV op).
        body = JSON_INSTEAD_OF_CSV if op is CSV else None
        made = Fault(kind="malformed", body=body, **common)
    elif fault == "malformed CSV":
        body = None if op is CSV else CSV_INSTEAD_OF_JSON
        made = Fault(kind="malformed", body=body, **common)
    elif fault == "expired token":
        made = Fault(kind="expire_tokens", **common)
    elif fault.startswith("102 then "):
        assert op is POLL, "the sandbox answers 102 on the Cost Explorer poll only"
        state.processing_mode = fault.removeprefix("102 then ")
        state.cost_polls_before_ready = 1 if times == 1 else 10**6
        return None
    else:  # pragma: no cover - FAULTS and this function go together
        raise AssertionError(fault)
    return state.add_fault(made)


def _assert_error(exc: BaseException, cell: Cell) -> None:
    assert type(exc) is cell.error, f"{type(exc).__name__}: {exc}"
    if cell.status is not None:
        assert isinstance(exc, AtlasAPIError)  # every error with a status is one
        assert exc.status == cell.status
        assert exc.error_code == cell.code


def _token_fetches(sandbox) -> int:
    return len(sandbox.state.requests_for(OAUTH_TOKEN))


# ---- the grid ----------------------------------------------------------------------------------

SANDBOX_CELLS = [
    (fault, op) for (fault, op) in TABLE if not (fault.startswith("102 ") and op is not POLL)
]


def _id(fault: str, op: Operation) -> str:
    return f"{fault.replace(' ', '_')}-{op.value}"


@pytest.mark.parametrize(("fault", "op"), SANDBOX_CELLS, ids=[_id(*c) for c in SANDBOX_CELLS])
async def test_cell_against_the_sandbox(sandbox, make_client, fake_time, fault, op):
    cell = TABLE[fault, op].effective
    for times in (1, None):
        sandbox.state.reset()
        sandbox.state.cost_polls_before_ready = 0  # a poll without a fault is ready at once
        client = make_client(
            "oauth",
            sleep=fake_time.sleep,
            clock=fake_time.clock,
            max_retries=MAX_RETRIES,
            poll_timeout=POLL_TIMEOUT,
            check_responses=False,  # faulty answers are not in the spec (requests still are)
        )
        # make_client injects its own httpx client, whose time-out wins over
        # AtlasClient(timeout=...): set the short read time-out there.
        client._test_http.timeout = httpx.Timeout(TIMEOUT)
        ctx = _ctx(sandbox)
        if op is POLL:
            ctx.token = await _bounded(fault, client.create_cost_query(ctx.org_id, ctx.query))
        slept_before = len(fake_time.slept)
        injected = _install(sandbox.state, fault, op, times)

        def attempts(injected: Fault | None = injected) -> int:
            if injected is not None:
                return injected.hits
            return len(sandbox.state.requests_for(op.value))

        if times == 1:
            await _transient(sandbox, client, fault, op, ctx, cell, attempts)
            if fault.endswith("Retry-After"):
                assert RETRY_AFTER in fake_time.slept[slept_before:]
        else:
            await _persistent(sandbox, client, fault, op, ctx, cell, attempts)


async def _transient(sandbox, client, fault, op, ctx, cell: Cell, attempts) -> None:
    """``times=1``: retried cells succeed; reported ones fail once, then the next call works."""
    if cell.kind.startswith("retried"):
        result = await _bounded(fault, _call(client, op, ctx))
        assert _succeeded(op, result, ctx), result
        assert attempts() == 1  # the fault did fire: the success came from a retry
        if cell.kind == "retried once":
            assert _token_fetches(sandbox) == 2
    elif cell.kind == "reported":
        with pytest.raises(Exception) as err:
            await _bounded(fault, _call(client, op, ctx))
        _assert_error(err.value, cell)
        assert attempts() == 1
        assert _succeeded(op, await _bounded(fault, _call(client, op, ctx)), ctx)
    else:
        assert cell.kind == "not ready"
        assert isinstance(await _bounded(fault, _call(client, op, ctx)), NotReady)
        assert attempts() == 1
        assert _succeeded(op, await _bounded(fault, _call(client, op, ctx)), ctx)


async def _persistent(sandbox, client, fault, op, ctx, cell: Cell, attempts) -> None:
    """``times=None``: the documented exception after the documented number of requests."""
    if cell.kind == "not ready":
        for polls in (1, 2):  # the client never retries a poll itself: one request per call
            assert isinstance(await _bounded(fault, _call(client, op, ctx)), NotReady)
            assert attempts() == polls
        return
    started = time.monotonic()
    with pytest.raises(Exception) as err:
        await _bounded(fault, _call(client, op, ctx))
    _assert_error(err.value, cell)
    assert attempts() == cell.attempts
    if cell.error is AtlasTransportError:
        cause = {
            "connection reset": "ReadError",
            "closed before any byte": "RemoteProtocolError: Server disconnected",
            "malformed status line": "RemoteProtocolError: illegal status line",
            "read time-out": "ReadTimeout",
        }[fault]
        assert f"after {cell.attempts} attempt(s): {cause}" in str(err.value)
        if fault == "read time-out":
            assert time.monotonic() - started < cell.attempts * TIMEOUT + 1.0
    if cell.error in (ServerError, RateLimited) and fault.endswith("Retry-After"):
        assert isinstance(err.value, (ServerError, RateLimited))  # checked by _assert_error
        assert err.value.retry_after == RETRY_AFTER


# ---- 102 where the sandbox never sends it -------------------------------------------------------


class Processing102Front:
    """A loopback HTTP/1.1 front for the sandbox that answers API requests with a bare 102.

    The sandbox sends ``102 Processing`` on the Cost Explorer poll only; this covers the
    table's "n/a; if it came" cells for the other operations. The first ``times`` requests
    on an Atlas API path get ``HTTP/1.1 102 Processing`` and then a closed connection
    (``close``) or silence until the client gives up (``silence``). Everything else
    (OAuth, later requests) is forwarded to the sandbox, one request per connection.
    """

    def __init__(self, upstream: str, mode: str, times: int | None) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname, parts.port
        self.mode = mode
        self.times = times
        self.answered = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Processing102Front:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            target = lines[0].split(b" ")[1]
            if target.startswith(b"/api/atlas/v2/") and (
                self.times is None or self.answered < self.times
            ):
                self.answered += 1
                writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
                await writer.drain()
                if self.mode == "silence":
                    await reader.read()  # until the client times out and hangs up
                return
            kept = [line for line in lines if line and not line.lower().startswith(b"connection:")]
            request = b"\r\n".join([*kept, b"Connection: close", b"", b""]) + body
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            try:
                up_writer.write(request)
                await up_writer.drain()
                writer.write(await up_reader.read())
                await writer.drain()
            finally:
                up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


NA_102_CELLS = [(fault, op) for (fault, op) in TABLE if fault.startswith("102 ") and op is not POLL]


@pytest.mark.parametrize(("fault", "op"), NA_102_CELLS, ids=[_id(*c) for c in NA_102_CELLS])
async def test_102_on_an_operation_that_never_processes(sandbox, fake_time, fault, op):
    cell = TABLE[fault, op].effective
    mode = fault.removeprefix("102 then ")
    creds = sandbox.data.credentials
    ctx = _ctx(sandbox)
    for times in (1, None):
        sandbox.state.reset()
        async with Processing102Front(sandbox.base_url, mode, times) as front:
            # Built the way the bot builds it: AtlasClient's own httpx client and time-out.
            client = AtlasClient(
                base_url=front.url,
                auth=ServiceAccountAuth(creds.client_id, creds.client_secret),
                timeout=TIMEOUT,
                max_retries=MAX_RETRIES,
                sleep=fake_time.sleep,
                clock=fake_time.clock,
            )
            try:
                if times == 1:
                    result = await _bounded(fault, _call(client, op, ctx))
                    assert _succeeded(op, result, ctx)
                    assert front.answered == 1
                else:
                    with pytest.raises(AtlasTransportError) as err:
                        await _bounded(fault, _call(client, op, ctx))
                    _assert_error(err.value, cell)
                    assert front.answered == cell.attempts
                    cause = {"close": "RemoteProtocolError", "silence": "ReadTimeout"}[mode]
                    assert f"after {cell.attempts} attempt(s): {cause}" in str(err.value)
            finally:
                await client.aclose()


# ---- the doc and the table ---------------------------------------------------------------------


def _doc_table() -> tuple[list[str], dict[tuple[str, str], str]]:
    """The fault table in the doc: its columns and its cells."""
    columns, faults, cells = fault_table(DOC)
    assert faults == list(FAULTS)
    return columns, cells


def test_the_doc_lists_the_same_cells():
    columns, cells = _doc_table()
    assert columns == [op.value for op in OPERATIONS]
    expected = {(fault, op.value): cell.text() for (fault, op), cell in TABLE.items()}
    assert cells == expected


def test_the_doc_states_the_client_defaults():
    """The deadlines section quotes AtlasClient's defaults: keep it true."""
    text = DOC.read_text(encoding="utf-8")
    stated = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", text, flags=re.MULTILINE))
    params = inspect.signature(AtlasClient.__init__).parameters
    for name in ("timeout", "poll_timeout", "max_retries", "max_retry_seconds"):
        assert name in stated, name
        assert float(stated[name]) == params[name].default, name


# ---- the deadline with real time, and what users read -------------------------------------------


async def test_a_persistent_time_out_ends_within_max_retry_seconds_plus_one_time_out(
    sandbox, make_client
):
    """Real clock and sleep: the whole call ends by ``max_retry_seconds + timeout``."""
    ctx = _ctx(sandbox)
    sandbox.state.add_fault(
        Fault(kind="latency", seconds=LATENCY, operation=PENDING.value, times=None)
    )
    client = make_client("oauth", max_retries=50, max_retry_seconds=1.0, check_responses=False)
    client._test_http.timeout = httpx.Timeout(TIMEOUT)
    started = time.monotonic()
    with pytest.raises(AtlasTransportError, match="ReadTimeout"):
        await asyncio.wait_for(client.pending_invoices(ctx.org_id), 5)
    assert time.monotonic() - started < 1.0 + TIMEOUT + 0.5


async def test_transport_error_message_names_what_happened(sandbox, make_client, fake_time):
    """The text users get (``explain`` quotes it) must not end in an empty cause.

    httpx's ReadError (and ReadTimeout) from httpcore carry no message, and
    ``f"{exc or 'connection failed'}"`` never falls back: an exception is always truthy.
    """
    ctx = _ctx(sandbox)
    _install(sandbox.state, "connection reset", PENDING, None)
    client = make_client(
        "oauth", sleep=fake_time.sleep, clock=fake_time.clock, check_responses=False
    )
    client._test_http.timeout = httpx.Timeout(TIMEOUT)
    with pytest.raises(AtlasTransportError) as err:
        await asyncio.wait_for(client.pending_invoices(ctx.org_id), BOUND)
    message = str(err.value)
    assert not message.rstrip().endswith(":"), message


@pytest.mark.parametrize("op", [PENDING, INVOICE, LIST, CREATE], ids=lambda op: op.value)
async def test_an_enveloped_102_elsewhere_is_a_malformed_response(sandbox, make_client, op):
    """With ``envelope=true`` a 102 arrives as HTTP 200 ``{"status": 102}``: off the poll it is
    an answer the bot cannot read (the CSV operation is never enveloped)."""
    ctx = _ctx(sandbox)
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=200,
            body='{"status": 102, "content": {}}',
            content_type="application/json",
            operation=op.value,
        )
    )
    client = make_client("oauth", envelope=True, check_responses=False)
    with pytest.raises(MalformedResponse, match="102 from an operation that never processes"):
        await asyncio.wait_for(_call(client, op, ctx), BOUND)


# ---- bugs found while filling the table (these fail until the client is fixed) -----------------


@pytest.mark.parametrize("fault", ["503 + Retry-After", "connection reset"])
async def test_a_token_endpoint_hiccup_is_retried_not_reported_as_bad_credentials(
    sandbox, make_client, fake_time, fault
):
    """A new token (first use, refresh, or the "expired token" row's retry) can meet the same
    transient faults as any API call. ``ServiceAccountAuth._fetch`` turns a 503 into
    ``Unauthorized(503, INVALID_SERVICE_ACCOUNT)`` and a reset into ``AtlasTransportError``;
    neither is retried, and bot/services/costs.py treats ``Unauthorized`` as permanent."""
    ctx = _ctx(sandbox)
    kind = {"503 + Retry-After": "status", "connection reset": "reset"}[fault]
    extra = {"status": 503, "retry_after": RETRY_AFTER} if kind == "status" else {}
    sandbox.state.add_fault(Fault(kind=kind, operation=OAUTH_TOKEN, times=1, **extra))
    client = make_client(
        "oauth", sleep=fake_time.sleep, clock=fake_time.clock, check_responses=False
    )
    invoices = await asyncio.wait_for(client.pending_invoices(ctx.org_id), BOUND)
    assert [i.status_name for i in invoices] == ["PENDING"]
    if kind == "status":
        sandbox.state.add_fault(Fault(kind=kind, operation=OAUTH_TOKEN, times=None, **extra))
        sandbox.state.expire_tokens()
        with pytest.raises(ServerError) as err:
            await asyncio.wait_for(client.pending_invoices(ctx.org_id), BOUND)
        assert err.value.status == 503
