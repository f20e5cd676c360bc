"""The async Atlas Admin API billing client shared by the CLI, handlers, jobs and shell.

One ``httpx.AsyncClient`` underneath (pooling, timeouts). The client owns the
base URL, authentication, the versioned media type of each operation,
``envelope``/``pretty``, ID validation before any URL is built, retries with
backoff that honour ``Retry-After``, the per-org request budget, typed results
and typed errors.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from bot.atlas import _ids
from bot.atlas._auth import ServiceAccountAuth, api_key_auth
from bot.atlas._budget import ENDPOINT_SETS, OverBudget, RequestBudget
from bot.atlas._errors import (
    AtlasAPIError,
    AtlasTransportError,
    InvalidInput,
    MalformedResponse,
    RateLimited,
    ServerError,
    error_class,
)
from bot.atlas._ids import SERVICES
from bot.atlas._media import Operation, media_type
from bot.atlas._models import CostQuery, CostResult, CostRow, Invoice, InvoiceMetadata, NotReady
from bot.atlas._transport import AtlasTransport, Watch, watches_interim, watching
from bot.core import version
from bot.core.retry_after import parse_retry_after

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)

API = "/api/atlas/v2"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class AtlasClient:
    """Async client for the six Atlas billing operations.

    Keyword-only construction; ``http_client`` may be injected (tests, shared
    pools; give it ``transport=AtlasTransport()`` so a poll can still tell a 102 from a
    fault). ``poll_timeout`` bounds a Cost Explorer poll's connect and write, and how long
    it waits after a ``102`` before calling it "not ready"; ``poll_read_timeout`` is how
    long a poll waits for the first byte of a real answer.
    ``request_counter``, when given, is a counter labelled ``operation`` and
    ``status`` that counts every request sent (retries and token requests too).
    """

    def __init__(
        self,
        *,
        base_url: str = "https://cloud.mongodb.com",
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
        poll_timeout: float = 5.0,
        poll_read_timeout: float = 15.0,
        max_retries: int = 4,
        max_retry_seconds: float = 60.0,
        envelope: bool = False,
        pretty: bool = False,
        budget: RequestBudget | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str | None = None,
        request_counter: Counter | None = None,
    ) -> None:
        self._http = http_client or httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"User-Agent": user_agent or version.user_agent()},
            transport=AtlasTransport(
                limits=httpx.Limits(max_connections=50, max_keepalive_connections=20)
            ),
        )
        # Without AtlasTransport underneath, a 102 cannot be told from a fault (see cost_result).
        self._watches_interim = watches_interim(self._http)
        self._owns_http = http_client is None
        self._auth = auth
        self._requests = request_counter
        if isinstance(auth, ServiceAccountAuth):
            auth.bind(self._http, request_counter=request_counter)
        self._poll_timeout = poll_timeout
        self._poll_read_timeout = poll_read_timeout
        self._max_retries = max_retries
        self._max_retry_seconds = max_retry_seconds
        self._envelope = envelope
        self._pretty = pretty
        self._budget = budget or RequestBudget(sleep=sleep, clock=clock)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def with_credentials(
        cls,
        *,
        base_url: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        public_key: str | None = None,
        private_key: str | None = None,
        **options: Any,
    ) -> AtlasClient:
        """Service account when given (Atlas's preferred method), else the API key pair."""
        auth: httpx.Auth | None = None
        if client_id and client_secret:
            auth = ServiceAccountAuth(client_id, client_secret)
        elif public_key and private_key:
            auth = api_key_auth(public_key, private_key)
        return cls(base_url=base_url, auth=auth, **options)

    def with_auth(self, auth: httpx.Auth) -> AtlasClient:
        """This client with other credentials: same base URL, connection pool, request budget,
        retries and counters.

        For an org's own credentials (``connect``): many orgs share one pool. Closing the copy
        revokes its own token and leaves the pool to the client it was made from.
        """
        clone = copy.copy(self)
        clone._auth, clone._owns_http = auth, False
        if isinstance(auth, ServiceAccountAuth):
            auth.bind(self._http, request_counter=self._requests)
        return clone

    async def aclose(self) -> None:
        if isinstance(self._auth, ServiceAccountAuth):
            await self._auth.revoke()
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AtlasClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- operations -----------------------------------------------------------------

    @property
    def poll_attempt_seconds(self) -> float:
        """The longest one Cost Explorer poll request can take: connect, then the first byte.

        A caller holding a lease adds its own ``max_wait`` to this.
        """
        return self._poll_timeout + self._poll_read(self._http.timeout.read)

    def _poll_read(self, default: float | None) -> float:
        if not self._watches_interim:
            return self._poll_timeout  # silence must mean "not ready" soon (see cost_result)
        if self._owns_http or default is None:
            return self._poll_read_timeout
        return min(self._poll_read_timeout, default)

    # ``max_wait`` (seconds, on the calls jobs make): how long the call may wait in all, for
    # the request budget, a ``Retry-After`` or a backoff. A wait that would end later is not
    # started: ``RateLimited`` (with ``retry_after``) or the error that caused it is raised.

    async def pending_invoices(
        self, org_id: str, *, max_wait: float | None = None
    ) -> list[Invoice]:
        """The org's pending (current billing cycle) invoices, with their line items.

        The spec documents a paginated list; some deployments answer a single
        invoice object. Both are accepted.
        """
        items = await self._pending_items(org_id, max_wait)
        return _parse_list(Invoice, items, "pending invoices")

    async def pending_totals(
        self, org_id: str, *, max_wait: float | None = None
    ) -> list[InvoiceMetadata]:
        """The pending invoices' amounts only: line items are not validated, which is most
        of the cost of a large invoice when only its month-to-date total matters."""
        items = await self._pending_items(org_id, max_wait)
        return _parse_list(InvoiceMetadata, items, "pending invoices")

    async def _pending_items(self, org_id: str, max_wait: float | None) -> object:
        org_id = _ids.org_id(org_id)
        payload = await self._json(
            Operation.LIST_PENDING,
            "GET",
            f"/orgs/{org_id}/invoices/pending",
            org_id,
            max_wait=max_wait,
        )
        if isinstance(payload, dict) and "results" in payload:
            return payload["results"]
        if isinstance(payload, dict) and "id" in payload:
            return [payload]
        if isinstance(payload, dict) and not payload:
            return []
        raise _malformed("pending invoices", "neither a list of invoices nor an invoice")

    async def invoice(
        self, org_id: str, invoice_id: str, *, max_wait: float | None = None
    ) -> Invoice:
        org_id, invoice_id = _ids.org_id(org_id), _ids.invoice_id(invoice_id)
        payload = await self._json(
            Operation.GET_INVOICE,
            "GET",
            f"/orgs/{org_id}/invoices/{invoice_id}",
            org_id,
            max_wait=max_wait,
        )
        return _parse(Invoice, payload, "invoice")

    async def invoices(
        self,
        org_id: str,
        *,
        items_per_page: int = 100,
        status_names: tuple[str, ...] = (),
        from_date: date | None = None,
        to_date: date | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[InvoiceMetadata]:
        """Every invoice of the org, newest first, fetched page by page as iterated."""
        org_id = _ids.org_id(org_id)
        if not 1 <= items_per_page <= 500:
            raise InvalidInput(f"items_per_page must be 1 to 500, got {items_per_page}")
        params: dict[str, Any] = {"itemsPerPage": items_per_page, "includeCount": "true"}
        if status_names:
            params["statusNames"] = list(status_names)
        if from_date:
            params["fromDate"] = from_date.isoformat()
        if to_date:
            params["toDate"] = to_date.isoformat()
        return self._pages(org_id, params, limit)

    async def _pages(
        self, org_id: str, params: dict[str, Any], limit: int | None
    ) -> AsyncIterator[InvoiceMetadata]:
        seen, page = 0, 1
        while True:
            payload = await self._json(
                Operation.LIST_INVOICES,
                "GET",
                f"/orgs/{org_id}/invoices",
                org_id,
                params={**params, "pageNum": page},
            )
            if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
                raise _malformed("invoice list", "no results list")
            results = _parse_list(InvoiceMetadata, payload["results"], "invoice list")
            for item in results:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            total = payload.get("totalCount")
            has_next = any(link.get("rel") == "next" for link in payload.get("links") or [])
            if (
                not results
                or (isinstance(total, int) and seen >= total)
                or (total is None and not has_next)
            ):
                return
            page += 1

    @asynccontextmanager
    async def invoice_csv(
        self, org_id: str, invoice_id: str
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream one invoice's CSV: ``async with client.invoice_csv(o, i) as chunks``.

        The body is never loaded whole: large organisations have invoices with
        hundreds of thousands of rows.
        """
        org_id, invoice_id = _ids.org_id(org_id), _ids.invoice_id(invoice_id)
        path = f"/orgs/{org_id}/invoices/{invoice_id}/csv"
        response = await self._send(
            Operation.GET_INVOICE_CSV, "GET", path, org_id, accept="csv", stream=True
        )
        try:
            yield response.aiter_bytes()
        finally:
            await response.aclose()

    async def download_invoice_csv(self, org_id: str, invoice_id: str, sink: BinaryIO) -> int:
        """Write the CSV to a binary file-like ``sink``; returns the byte count."""
        written = 0
        async with self.invoice_csv(org_id, invoice_id) as chunks:
            async for chunk in chunks:
                sink.write(chunk)
                written += len(chunk)
        return written

    async def create_cost_query(
        self, org_id: str, query: CostQuery, *, max_wait: float | None = None
    ) -> str:
        """Start a Cost Explorer query; returns its 64-character token."""
        org_id = _ids.org_id(org_id)
        body = validate_cost_query(query)
        payload = await self._json(
            Operation.CREATE_COST_QUERY,
            "POST",
            f"/orgs/{org_id}/billing/costExplorer/usage",
            org_id,
            json_body=body,
            max_wait=max_wait,
        )
        token = payload.get("token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or len(token) != 64:
            raise _malformed("Cost Explorer", "the answer carries no 64-character token")
        return token

    async def cost_result(
        self, org_id: str, token: str, *, max_wait: float | None = None
    ) -> CostResult | NotReady:
        """Poll a Cost Explorer query once: the ready result, or ``NotReady``.

        Atlas answers "still processing" with ``102`` as the final status. httpcore
        swallows every 1xx but 101 and keeps reading, so the 102 reaches us as the
        server closing the connection (``RemoteProtocolError``) or as silence
        (``ReadTimeout``), exactly as a connection closed or silent *without* a 102
        would. ``AtlasTransport`` watches the bytes (``bot/atlas/_transport.py``): only
        a failure after a 1xx head is "not ready" (not retried here: polling again later
        is the retry), and after the head silence is waited out for ``poll_timeout``
        only. Every other fault (refused, reset or closed before any byte, a malformed
        status line, no first byte within ``poll_read_timeout``) is a transport error,
        retried like any read. Without ``AtlasTransport`` (an injected client built
        without it) the old reading applies: "server disconnected without sending a
        response" and silence past ``poll_timeout`` are both "not ready".
        """
        org_id, token = _ids.org_id(org_id), _ids.cost_token(token)
        path = f"/orgs/{org_id}/billing/costExplorer/usage/{token}"
        read = self._poll_read(self._http.timeout.read)
        try:
            response = await self._send(
                Operation.GET_COST_RESULT,
                "GET",
                path,
                org_id,
                timeout=httpx.Timeout(self._poll_timeout, read=read),
                poll=True,
                max_wait=max_wait,
            )
        except _NotReadySignal as signal:
            return NotReady(signal.reason)
        if response.status_code == 102:
            return NotReady("processing")
        payload = self._decode(response, "Cost Explorer result")
        if isinstance(payload, dict) and payload.get("_status") == 102:
            return NotReady("processing")
        if not isinstance(payload, dict):
            raise _malformed("Cost Explorer result", "not a JSON object")
        rows = payload.get("usageDetails", [])
        if not isinstance(rows, list):
            raise _malformed("Cost Explorer result", "usageDetails is not a list")
        return CostResult(rows=tuple(_parse_list(CostRow, rows, "Cost Explorer result")))

    # ---- transport ------------------------------------------------------------------

    async def _json(
        self,
        operation: Operation,
        method: str,
        path: str,
        org_id: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
        max_wait: float | None = None,
    ) -> Any:
        response = await self._send(
            operation, method, path, org_id, params=params, json_body=json_body, max_wait=max_wait
        )
        payload = self._decode(response, operation.value)
        if isinstance(payload, dict) and payload.get("_status") == 102:
            raise _malformed(operation.value, "102 from an operation that never processes")
        return payload

    def _decode(self, response: httpx.Response, what: str) -> Any:
        """JSON with numbers as ``Decimal``; unwraps the envelope when it was asked for."""
        try:
            payload = json.loads(response.content, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            raise _malformed(what, "the body is not valid JSON", response) from None
        if self._envelope and isinstance(payload, dict) and "status" in payload:
            status = payload.pop("status")
            if status == 102:
                return {"_status": 102}
            if "content" in payload and len(payload) == 1:
                payload = payload["content"]
        return payload

    async def _send(
        self,
        operation: Operation,
        method: str,
        path: str,
        org_id: str,
        *,
        accept: str = "json",
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
        stream: bool = False,
        timeout: httpx.Timeout | None = None,
        poll: bool = False,
        max_wait: float | None = None,
    ) -> httpx.Response:
        """Send with budget, retries and error mapping; returns a 2xx (or 102) response.

        ``poll``: the Cost Explorer poll, whose 102 (see ``cost_result``) raises
        ``_NotReadySignal``. ``max_wait``: no wait of this call (budget, ``Retry-After``,
        backoff) ends later than that many seconds after it began.
        """
        headers = {"Accept": media_type(operation, accept)}
        content = None
        if json_body is not None:
            headers["Content-Type"] = media_type(operation, "json")
            content = json.dumps(json_body).encode()
        query = dict(params or {})
        if accept == "json":
            if self._envelope:
                query["envelope"] = "true"
            if self._pretty:
                query["pretty"] = "true"
        request = self._http.build_request(
            method,
            API + path,
            params=query,
            headers=headers,
            content=content,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        endpoint_set = ENDPOINT_SETS[operation]
        started = self._clock()
        deadline = started + self._max_retry_seconds
        wait_until = None if max_wait is None else started + max(max_wait, 0.0)
        attempt = 0
        while True:
            attempt += 1
            try:
                ticket = await self._budget.acquire(
                    org_id,
                    endpoint_set,
                    max_wait=None if wait_until is None else max(wait_until - self._clock(), 0.0),
                )
            except OverBudget as over:
                raise _over_budget(operation, over, max_wait) from None
            watch = Watch(self._poll_timeout) if poll else None
            watched: AbstractContextManager[object] = (
                watching(watch) if watch is not None else nullcontext()
            )
            try:
                try:
                    with watched:
                        response = await self._http.send(request, auth=self._auth, stream=stream)
                except BaseException:
                    self._budget.release(ticket)  # no answer (cancelled too): nothing learned
                    raise
            except (ServerError, RateLimited, AtlasTransportError) as exc:
                # Raised by the auth flow: the token endpoint was busy or unreachable.
                delay = self._retry_delay(
                    attempt, deadline, getattr(exc, "retry_after", None), wait_until
                )
                if delay is None:
                    raise
                log.warning("atlas token endpoint: %s, retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                continue
            except httpx.TransportError as exc:
                if watch is not None and self._is_processing(exc, watch):
                    # How Atlas's 102 reaches httpx (see cost_result): counted as the 102 it is.
                    self._count(operation, "102")
                    raise _NotReadySignal(type(exc).__name__) from None
                self._count(operation, "transport_error")
                delay = self._retry_delay(attempt, deadline, None, wait_until)
                if delay is None:
                    raise AtlasTransportError(
                        f"{operation.value}: no answer from Atlas after {attempt} attempt(s): "
                        f"{type(exc).__name__}: {str(exc) or 'connection failed'}"
                    ) from exc
                log.warning(
                    "atlas %s: %s, retrying in %.1fs", operation.value, type(exc).__name__, delay
                )
                await self._sleep(delay)
                continue
            status = response.status_code
            if self._envelope and accept == "json" and status == 200:
                status = _enveloped_status(response)
            try:
                if stream and status >= 400:
                    await response.aread()
                    await response.aclose()
            finally:
                self._budget.observe(ticket, response, status=status)
            self._count(operation, str(status))
            if status < 400:
                return response
            retry_after = _retry_after(response)
            if status in RETRY_STATUSES:
                delay = self._retry_delay(attempt, deadline, retry_after, wait_until)
                if delay is not None:
                    log.warning(
                        "atlas %s: HTTP %s, retrying in %.1fs", operation.value, status, delay
                    )
                    await self._sleep(delay)
                    continue
            raise _api_error(status, _error_body(response), response, retry_after)

    def _is_processing(self, exc: httpx.TransportError, watch: Watch) -> bool:
        """Whether a poll's transport error is Atlas's 102 (see ``cost_result``)."""
        if watch.observed:
            return watch.interim is not None
        # Not watched (no AtlasTransport underneath): the old reading, which cannot tell a
        # 102 then close from a close without one, nor a 102 then silence from a slow answer.
        if isinstance(exc, httpx.ReadTimeout):
            return True
        return isinstance(exc, httpx.RemoteProtocolError) and "without sending" in str(exc)

    def _count(self, operation: Operation, status: str) -> None:
        if self._requests is not None:
            self._requests.labels(operation=operation.value, status=status).inc()

    def _retry_delay(
        self, attempt: int, deadline: float, retry_after: float | None, wait_until: float | None
    ) -> float | None:
        """Capped, jittered exponential backoff; ``Retry-After`` wins when Atlas gives it.

        ``None`` when the attempts or the total time are spent, or the wait would end after
        the caller's ``max_wait``.
        """
        if attempt > self._max_retries:
            return None
        if retry_after is not None:
            delay = retry_after
        else:
            delay = min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
        ends = self._clock() + delay
        if ends > deadline or (wait_until is not None and ends > wait_until):
            return None
        return delay


class _NotReadySignal(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _over_budget(operation: Operation, over: OverBudget, max_wait: float | None) -> RateLimited:
    """The request budget would wait past the caller's ``max_wait``: nothing was sent."""
    return RateLimited(
        429,
        reason="Too Many Requests",
        detail=(
            f"{operation.value}: this org's {over.endpoint_set} requests are at Atlas's rate "
            f"limit for {over.seconds:.0f} s more, longer than this call may wait "
            f"({max_wait or 0:.0f} s); nothing was sent"
        ),
        retry_after=over.seconds,
    )


def validate_cost_query(query: CostQuery) -> dict[str, Any]:
    """Check a Cost Explorer query against the API's rules; returns the request body."""
    _ids.first_of_month(query.start, "startDate")
    _ids.first_of_month(query.end, "endDate")
    if query.end <= query.start:
        raise InvalidInput(
            f"endDate ({query.end.isoformat()}) must be after startDate ({query.start.isoformat()});"
            " endDate is exclusive"
        )
    if query.group_by is not None and query.group_by not in _ids.GROUP_BY:
        raise InvalidInput(
            f"groupBy must be one of {', '.join(_ids.GROUP_BY)}, got {query.group_by!r}"
        )
    for org in query.organizations:
        _ids.object_id(org, "organization ID")
    for project in query.projects:
        _ids.object_id(project, "project ID")
    for cluster in query.clusters:
        _ids.object_id(cluster, "cluster ID")
    unknown = [s for s in query.services if s not in SERVICES]
    if unknown:
        raise InvalidInput(f"unknown service {unknown[0]!r}; known: {', '.join(SERVICES)}")
    return query.body()


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("Retry-After"))


def _error_body(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(body, dict) and set(body) == {"status", "content"}:
        return body["content"]  # an enveloped error
    return body


def _enveloped_status(response: httpx.Response) -> int:
    """The status an ``envelope=true`` answer carries in its body (200 if it names none)."""
    try:
        status = response.json().get("status", 200)
    except (ValueError, UnicodeDecodeError, AttributeError):
        return 200
    return status if isinstance(status, int) else 200


def _api_error(
    status: int, body: Any, response: httpx.Response, retry_after: float | None = None
) -> AtlasAPIError:
    """The typed error for a status, with Atlas's fields when the body has them."""
    fields = body if isinstance(body, dict) else {}
    text = response.text[:500] if not fields else ""
    detail = fields.get("detail")
    if detail is None and text.strip():
        detail = " ".join(text.split())[:200]
    return error_class(status)(
        status,
        error_code=_str_or_none(fields.get("errorCode")),
        reason=_str_or_none(fields.get("reason")) or response.reason_phrase or None,
        detail=_str_or_none(detail),
        body=text,
        retry_after=retry_after,
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _malformed(
    what: str, problem: str, response: httpx.Response | None = None
) -> MalformedResponse:
    return MalformedResponse(
        response.status_code if response is not None else 200,
        error_code="MALFORMED_RESPONSE",
        detail=f"Atlas sent a {what} answer the bot cannot read: {problem}",
    )


_Model = TypeVar("_Model", bound=BaseModel)


def _parse(model: type[_Model], payload: Any, what: str) -> _Model:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _malformed(what, f"{where}: {first['msg']}") from None


def _parse_list(model: type[_Model], items: object, what: str) -> list[_Model]:
    if not isinstance(items, list):
        raise _malformed(what, "expected a list")
    return [_parse(model, item, what) for item in items]


__all__ = ["AtlasClient", "validate_cost_query"]
