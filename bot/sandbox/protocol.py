"""Atlas's HTTP conventions, shared by every sandbox API endpoint: errors, auth, media, faults."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import date
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bot.atlas._media import Operation, media_type
from bot.sandbox.data import Org
from bot.sandbox.state import ENDPOINT_SET_OF, Fault, SandboxState

API_PREFIX = "/api/atlas/v2"
REALM = "MMS Public API"

# The spec's pattern for org, invoice and project IDs.
HEX24 = re.compile(r"[a-f0-9]{24}")
_DEFAULT_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "USER_UNAUTHORIZED",
    404: "RESOURCE_NOT_FOUND",
    409: "CONFLICT",
    429: "RATE_LIMITED",
    500: "UNEXPECTED_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


class ApiError(Exception):
    """An Atlas-shaped error answer."""

    def __init__(
        self,
        status: int,
        error_code: str,
        detail: str,
        *,
        parameters: Iterable[Any] = (),
        headers: dict[str, str] | None = None,
        fields: Iterable[tuple[str, str]] = (),
        envelope: bool = True,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error_code = error_code
        self.detail = detail
        self.parameters = list(parameters)
        self.headers = headers or {}
        self.fields = list(fields)
        self.envelope = envelope

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "error": self.status,
            "errorCode": self.error_code,
            "reason": HTTPStatus(self.status).phrase,
            "detail": self.detail,
            "parameters": self.parameters,
        }
        if self.fields:
            body["badRequestDetail"] = {
                "fields": [{"field": f, "description": d} for f, d in self.fields]
            }
        return body


class ProcessingResponse(Response):
    """A bare ``102 Processing`` as the final answer, sent as raw ASGI messages.

    Starlette's own ``Response`` omits ``content-length`` on 1xx, so uvicorn would
    add chunked encoding and write a stray ``0\\r\\n\\r\\n`` after the head. With
    ``close`` the connection is closed after the head (httpx: RemoteProtocolError);
    without, it stays open and silent (httpx: ReadTimeout) until the keep-alive
    timeout.
    """

    def __init__(self, *, close: bool) -> None:
        super().__init__(status_code=102)
        self.close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (k, v) for k, v in self.raw_headers if k not in (b"content-length", b"content-type")
        ]
        headers.append((b"content-length", b"0"))
        if self.close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 102, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class ResetResponse(Response):
    """No HTTP answer: the TCP connection is aborted with an RST (``reset``), closed before
    any byte (``close``), or sent a line that is no HTTP status line, then closed
    (``garbage``).

    ASGI has no message for these, so this reaches the server's transport through the
    ``receive`` callable uvicorn hands the app (a bound method of its request cycle, which
    holds the transport). For an RST it sets ``SO_LINGER`` to zero, so closing resets.
    httpx then raises ``ReadError`` (reset) or ``RemoteProtocolError`` ("Server
    disconnected without sending a response", or "illegal status line").
    """

    def __init__(self, mode: str = "reset") -> None:
        super().__init__(status_code=500)
        self.mode = mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_receive = scope.get("sandbox.receive", receive)
        transport = getattr(getattr(raw_receive, "__self__", None), "transport", None)
        if transport is None:
            raise RuntimeError("a reset fault needs uvicorn (its request cycle's transport)")
        commit = scope.get("sandbox.commit")
        if commit is not None:
            commit(None)
        if self.mode == "garbage":
            transport.write(GARBAGE_STATUS_LINE)
        if self.mode == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        # Wait for the server to notice the disconnect, so it does not log an unfinished response.
        while (await raw_receive())["type"] != "http.disconnect":
            pass


# What a ``garbage`` fault sends instead of a status line (then it closes the connection).
GARBAGE_STATUS_LINE = b"HTTQ/1.1 200 OK\r\n\r\n"


# --- per-request context -------------------------------------------------------------


class Call:
    """One API request on its way through the pipeline."""

    def __init__(self, request: Request, state: SandboxState, operation: Operation) -> None:
        self.request = request
        self.state = state
        self.operation = operation
        self.org_id: str | None = request.path_params.get("orgId")
        self.envelope = False
        self.pretty = False
        self.accepted = "json"

    @property
    def base_url(self) -> str:
        return str(self.request.base_url).rstrip("/")

    def parse_flags(self) -> None:
        params = self.request.query_params
        self.pretty = bool_param(params, "pretty", default=False, envelope=False)
        self.envelope = bool_param(params, "envelope", default=False, envelope=False)

    def dumps(self, body: Any) -> bytes:
        if self.pretty:
            return json.dumps(body, indent=2).encode()
        return json.dumps(body, separators=(",", ":")).encode()

    def wrap(self, status: int, body: Any) -> tuple[int, Any]:
        """Apply ``envelope``: HTTP 200, the real status inside the body."""
        if not self.envelope:
            return status, body
        if isinstance(body, dict) and "results" in body:
            return 200, {**body, "status": status}
        return 200, {"status": status, "content": body}

    def json(self, body: Any, status: int = 200) -> Response:
        status, body = self.wrap(status, body)
        return Response(self.dumps(body), status_code=status, media_type=media_type(self.operation))

    def error(self, exc: ApiError) -> Response:
        status, body = exc.status, exc.body()
        if exc.envelope:
            status, body = self.wrap(status, body)
        return Response(
            self.dumps(body),
            status_code=status,
            media_type="application/json",
            headers=exc.headers,
        )

    def json_stream(
        self, status: int, body: Any, items: Callable[[], Iterator[dict[str, Any]]]
    ) -> Response:
        """JSON whose one list (the marker in ``body``) is streamed item by item."""
        status, wrapped = self.wrap(status, body)
        text = self.dumps(wrapped).decode()
        head, _, tail = text.partition(json.dumps(ITEMS_MARKER))
        line_start = head.rfind("\n") + 1
        indent = len(head[line_start:]) - len(head[line_start:].lstrip(" "))
        pretty = self.pretty
        dumps = self.dumps

        def chunks() -> Iterator[bytes]:
            yield head.encode()
            buffer: list[str] = []
            first = True
            for item in items():
                text = dumps(item).decode()
                if pretty:
                    pad = " " * (indent + 2)
                    text = pad + text.replace("\n", "\n" + pad)
                buffer.append(("[" if first else ",") + ("\n" if pretty else "") + text)
                first = False
                if len(buffer) >= 500:
                    yield "".join(buffer).encode()
                    buffer.clear()
            if first:
                buffer.append("[]")
            else:
                buffer.append(("\n" + " " * indent if pretty else "") + "]")
            buffer.append(tail)
            yield "".join(buffer).encode()

        return StreamingResponse(
            chunks(), status_code=status, media_type=media_type(self.operation)
        )


ITEMS_MARKER = "\x00sandbox-line-items\x00"


def bool_param(params: Any, name: str, *, default: bool, envelope: bool = True) -> bool:
    value: str | None = params.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ApiError(
        400,
        "VALIDATION_ERROR",
        f"Query parameter {name} must be true or false, got {value!r}.",
        parameters=[name, value],
        envelope=envelope,
    )


def int_param(params: Any, name: str, *, default: int, low: int, high: int | None) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"Query parameter {name} must be an integer {bound}, got {value!r}.",
            parameters=[name, value],
        )
    return number


def date_param(params: Any, name: str) -> date | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"Query parameter {name} must be a date (YYYY-MM-DD), got {value!r}.",
            parameters=[name, value],
        ) from None


# --- authentication ------------------------------------------------------------------

_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _challenge(state: SandboxState, *, stale: bool = False) -> str:
    return (
        f'Digest realm="{REALM}", domain="", nonce="{state._new_nonce()}", '
        f'algorithm=MD5, qop="auth", stale={"true" if stale else "false"}'
    )


def _unauthorized(state: SandboxState, detail: str, *, challenge: str | None = None) -> ApiError:
    return ApiError(
        401,
        "UNAUTHORIZED",
        detail,
        headers={"WWW-Authenticate": challenge or _challenge(state)},
        envelope=False,
    )


def _request_target(scope: Scope) -> str:
    target: bytes = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    return target.decode("latin-1")


def _authenticate(call: Call) -> bool:
    """Check the credentials; True when the caller has the Billing Viewer role."""
    state, request = call.state, call.request
    header = request.headers.get("authorization", "")
    scheme, _, rest = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        if state._take_faults(call.operation.value, call.org_id, ["expire_tokens"]):
            state.expire_tokens()
        if state._token_valid(rest.strip()):
            return True
        raise _unauthorized(
            state,
            "The access token is invalid, expired or revoked.",
            challenge=f'Bearer realm="{REALM}", error="invalid_token"',
        )
    if scheme != "digest":
        raise _unauthorized(state, "You are not authorized for this resource.")
    params = {
        m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _DIGEST_PARAM.finditer(rest)
    }
    creds = state.credentials
    keys = {
        creds.public_key: creds.private_key,
        creds.no_role_public_key: creds.no_role_private_key,
    }
    username = params.get("username", "")
    password = keys.get(username)
    required = ("username", "realm", "nonce", "uri", "response", "nc", "cnonce")
    if (
        password is None
        or any(not params.get(name) for name in required)
        or params.get("realm") != REALM
        or params.get("qop") != "auth"
        or params.get("algorithm", "MD5").upper() != "MD5"
        or params["uri"] != _request_target(request.scope)
    ):
        raise _unauthorized(state, "You are not authorized for this resource.")
    ha1 = _md5(f"{username}:{REALM}:{password}")
    ha2 = _md5(f"{request.method}:{params['uri']}")
    expected = _md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:auth:{ha2}")
    if not hmac.compare_digest(expected, params["response"].lower()):
        raise _unauthorized(state, "You are not authorized for this resource.")
    if params["nonce"] not in state._nonces:
        # Right credentials, a nonce we did not issue (or forgot on reset): ask again.
        raise _unauthorized(
            state, "The Digest nonce is stale.", challenge=_challenge(state, stale=True)
        )
    return username == creds.public_key


# --- faults --------------------------------------------------------------------------

_MALFORMED_JSON = b'{"links":[{"rel":"self","href":"https://cloud.mongodb.com/api/atl'
_MALFORMED_CSV = (
    b"Invoice Number,\nDate,Usage Date,Description\n"
    b'"unterminated,05/01/2024,AWS Instance M30\n12.34'
)


def _fault_response(call: Call, fault: Fault, csv_wanted: bool) -> Response:
    if fault.kind in ("reset", "close", "garbage"):
        return ResetResponse(fault.kind)
    if fault.kind == "malformed":
        status = 202 if call.operation is Operation.CREATE_COST_QUERY else 200
        fmt = "csv" if csv_wanted else "json"
        body = (
            fault.body
            if fault.body is not None
            else (_MALFORMED_CSV if csv_wanted else _MALFORMED_JSON)
        )
        return Response(body, status_code=status, media_type=media_type(call.operation, fmt))
    assert fault.status is not None
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    if fault.body is not None:
        raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
        content_type = fault.content_type or (
            "text/html; charset=utf-8"
            if raw.lstrip().startswith(b"<")
            else "text/plain; charset=utf-8"
        )
        return Response(
            raw, status_code=fault.status, headers={**headers, "Content-Type": content_type}
        )
    code = fault.error_code or _DEFAULT_CODES.get(fault.status, "UNEXPECTED_ERROR")
    return call.error(
        ApiError(fault.status, code, f"Injected fault: {fault.status}.", headers=headers)
    )


# --- the pipeline --------------------------------------------------------------------

_Handler = Callable[[Call, Org], Awaitable[Response]]

# Versioned media types each operation can answer with (see the spec).
_FORMATS: dict[Operation, tuple[str, ...]] = {
    Operation.LIST_INVOICES: ("json",),
    Operation.LIST_PENDING: ("json",),
    Operation.GET_INVOICE: ("json", "csv"),
    Operation.GET_INVOICE_CSV: ("csv",),
    Operation.CREATE_COST_QUERY: ("json",),
    Operation.GET_COST_RESULT: ("json", "csv"),
}


def _negotiate(call: Call) -> str:
    offered = {media_type(call.operation, fmt): fmt for fmt in _FORMATS[call.operation]}
    accept = call.request.headers.get("accept", "")
    for part in accept.split(","):
        name = part.split(";")[0].strip().lower()
        if name in offered:
            return offered[name]
    raise ApiError(
        406,
        "INVALID_VERSION_DATE",
        f"Invalid accept header or version date: {accept or '(none)'}. "
        f"This resource answers {', '.join(offered)}.",
        parameters=[accept],
    )


def _check_content_type(call: Call) -> None:
    if call.request.method != "POST":
        return
    given = call.request.headers.get("content-type", "")
    if given.split(";")[0].strip().lower() != media_type(call.operation):
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type must be {media_type(call.operation)}, got {given or '(none)'}.",
            parameters=[given],
        )


def _check_path(call: Call) -> None:
    for name, value in call.request.path_params.items():
        if name in ("orgId", "invoiceId"):
            ok = bool(HEX24.fullmatch(value))
            rule = "24 lowercase hexadecimal digits"
        else:  # token
            ok = len(value) == 64
            rule = "exactly 64 characters"
        if not ok:
            raise ApiError(
                400,
                "VALIDATION_ERROR",
                f"Path parameter {name} must be {rule}, got {value!r}.",
                parameters=[name, value],
                fields=[(name, f"must be {rule}")],
            )


async def _run(call: Call, handler: _Handler) -> Response:
    """One API request through the pipeline, in this order.

    1. ``state.latency_seconds``, then the ``envelope``/``pretty`` flags;
    2. authentication (a Bearer token from ``/api/oauth/token``, or HTTP Digest
       with an API key); an ``expire_tokens`` fault fires just before a Bearer
       check. 401s are never enveloped: a Digest client needs the real 401 and
       its challenge to authenticate at all;
    3. faults: they hit *authenticated* requests only, so the unauthenticated
       probe of a Digest handshake never uses one up;
    4. ``Accept`` (406) and, for POST, ``Content-Type`` (415);
    5. path parameters against the spec patterns (400);
    6. the org (404), the rate limit of the org's bucket for the operation's endpoint set
       (429; requests take a token from here on), the Billing Viewer role (403);
    7. the operation (its own 400s and 404s).
    """
    state = call.state
    scope = call.request.scope
    record = scope.get("sandbox.record")
    if record is not None:
        record["operation"] = call.operation.value
        record["org_id"] = call.org_id
    if state.latency_seconds > 0:
        await asyncio.sleep(state.latency_seconds)
    try:
        call.parse_flags()
        has_role = _authenticate(call)
        faults = state._take_faults(
            call.operation.value,
            call.org_id,
            ["status", "reset", "close", "garbage", "malformed", "latency"],
        )
        for fault in faults:
            if fault.kind == "latency":
                await asyncio.sleep(fault.seconds)
        terminal = [f for f in faults if f.kind != "latency"]
        if terminal:
            try:
                fmt = _negotiate(call)
            except ApiError:
                fmt = _FORMATS[call.operation][0]
            return _fault_response(call, terminal[0], fmt == "csv")
        call.accepted = _negotiate(call)
        _check_content_type(call)
        _check_path(call)
        assert call.org_id is not None
        org = state.data.org(call.org_id)
        if org is None:
            raise ApiError(
                404,
                "ORG_NOT_FOUND",
                f"No organization with ID {call.org_id} exists.",
                parameters=[call.org_id],
            )
        endpoint_set = ENDPOINT_SET_OF[call.operation]
        retry_after = state._take_token(org.id, endpoint_set)
        if retry_after is not None:
            # Atlas's 429 for an empty bucket, as its rate-limit page shows it
            # (https://www.mongodb.com/docs/atlas/api/api-rate-limit/, "Sample Error
            # Message"): errorCode RATE_LIMITED_TOKEN_BUCKET, the numbers in the detail and
            # in `parameters` [set, retry after, capacity, refill rate, refill seconds].
            # (The spec's generic 429 example says RATE_LIMITED.)
            refill_seconds = f"{state.rate_refill_seconds:g}"
            raise ApiError(
                429,
                "RATE_LIMITED_TOKEN_BUCKET",
                f"Rate limit exceeded for {endpoint_set}. Please retry after {retry_after} "
                f"seconds. Request capacity: {state.rate_limit}. Refill rate: "
                f"{state.rate_refill} per {refill_seconds} seconds.",
                parameters=[
                    endpoint_set,
                    retry_after,
                    state.rate_limit,
                    state.rate_refill,
                    state.rate_refill_seconds,
                ],
                headers={"Retry-After": str(retry_after)},
            )
        if not has_role:
            raise ApiError(
                403,
                "USER_UNAUTHORIZED",
                "Current user is not authorized to perform this action: the API key lacks "
                f"the Organization Billing Viewer role on organization {org.id}.",
                parameters=[org.id],
            )
        return await handler(call, org)
    except ApiError as exc:
        return call.error(exc)


def api_route(
    path: str, operation: Operation, handler: _Handler, state: SandboxState, method: str = "GET"
) -> Route:
    async def endpoint(request: Request) -> Response:
        call = Call(request, state, operation)
        response = await _run(call, handler)
        # RateLimit-Limit: the bucket's capacity; RateLimit-Remaining: its tokens left; "Atlas
        # may not always return response headers" (rate-limit page, "Response Headers"):
        # the `rate_headers` switch leaves them out.
        if not isinstance(response, ResetResponse) and state.rate_headers:
            endpoint_set = ENDPOINT_SET_OF[operation]
            response.headers["RateLimit-Limit"] = str(state.rate_limit)
            response.headers["RateLimit-Remaining"] = str(
                state._rate_remaining(call.org_id, endpoint_set)
            )
        return response

    return Route(API_PREFIX + path, endpoint, methods=[method], name=operation.value)
