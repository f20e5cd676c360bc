"""The sandbox Atlas Admin API (billing subset): a Starlette app with Atlas's auth, errors and quirks."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.atlas import GROUP_BY, SERVICES
from bot.atlas._media import Operation, media_type
from bot.sandbox.data import (
    Credentials,
    Invoice,
    Org,
    SandboxData,
    cost_csv,
    cost_rows,
)

API_PREFIX = "/api/atlas/v2"
REALM = "MMS Public API"
# Pseudo operation names for the OAuth endpoints (request log and faults).
OAUTH_TOKEN = "oauthToken"
OAUTH_REVOKE = "oauthRevoke"
FAULT_KINDS = ("status", "reset", "malformed", "latency", "expire_tokens")
PENDING_SHAPES = ("list", "object")
PROCESSING_MODES = ("close", "silence")

_HEX24 = re.compile(r"[a-f0-9]{24}")
_API_OPERATIONS = frozenset(op.value for op in Operation)
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
_SWITCH_DEFAULTS: dict[str, Any] = {
    "pending_shape": "list",
    "processing_mode": "close",
    "cost_polls_before_ready": 1,
    "token_ttl_seconds": 3600.0,
    "rate_limit": 100,
    "rate_window_seconds": 60.0,
    "latency_seconds": 0.0,
}


@dataclass
class Fault:
    """A misbehaviour injected into the next ``times`` matching requests.

    kind: ``status`` (answer ``status`` with an Atlas error body, or ``body``
    verbatim with ``content_type``; ``error_code``/``retry_after`` optional),
    ``reset`` (abort the TCP connection with an RST, no response at all),
    ``malformed`` (the operation's success status and media type, but a
    truncated JSON or broken CSV body, or ``body``), ``latency`` (wait
    ``seconds``, then answer normally), ``expire_tokens`` (fires on the next
    matching request that carries a Bearer token: every OAuth token issued so
    far stops working, so that request gets 401).
    operation: an ``Operation`` value, ``oauthToken``/``oauthRevoke``, or None
    for any Atlas API operation. org_id: None for any org. times: None means
    until cleared.
    """

    kind: str
    operation: str | None = None
    org_id: str | None = None
    times: int | None = 1
    status: int | None = None
    error_code: str | None = None
    retry_after: int | None = None
    body: str | bytes | None = None
    content_type: str | None = None
    seconds: float = 0.0
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}: {self.kind!r}")
        if self.operation is not None and self.operation not in (
            *_API_OPERATIONS,
            OAUTH_TOKEN,
            OAUTH_REVOKE,
        ):
            raise ValueError(f"unknown operation {self.operation!r}")
        if self.kind == "status" and not (
            isinstance(self.status, int) and 200 <= self.status <= 599
        ):
            raise ValueError("a status fault needs a status between 200 and 599")
        if self.kind == "latency" and not self.seconds > 0:
            raise ValueError("a latency fault needs seconds > 0")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (or None: until cleared)")
        if self.operation is not None:
            self.operation = str(self.operation)

    def matches(self, operation: str | None, org_id: str | None) -> bool:
        if self.operation is None:
            if operation not in _API_OPERATIONS:
                return False
        elif self.operation != operation:
            return False
        return self.org_id is None or self.org_id == org_id

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.body, bytes):
            data["body"] = self.body.decode("utf-8", "replace")
        return data


@dataclass(frozen=True)
class LoggedRequest:
    """One request the sandbox received (control endpoints excluded)."""

    method: str
    path: str
    query: dict[str, str]  # a repeated parameter's values are joined with commas
    headers: dict[str, str]  # lowercase names
    body: bytes
    status: int | None  # None: no response was sent (reset, or the client went away)
    operation: str | None
    org_id: str | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        return data


@dataclass
class _CostQuery:
    org_id: str
    start: date
    end: date
    group_by: str | None
    filters: dict[str, tuple[str, ...]]
    polls: int = 0
    rows: list[dict[str, Any]] | None = None


@dataclass
class _Token:
    expires_at: float
    revoked: bool = False


@dataclass
class _Window:
    started: float
    count: int = 0


@dataclass
class SandboxState:
    """Everything the sandbox knows: data, switches, faults, tokens and the request log.

    Switches (plain attributes; ``reset()`` restores them): ``pending_shape``
    (``list`` | ``object``), ``processing_mode`` (``close`` | ``silence``),
    ``cost_polls_before_ready``, ``token_ttl_seconds``, ``rate_limit``,
    ``rate_window_seconds``, ``latency_seconds``. ``clock`` (monotonic seconds)
    drives token expiry and rate windows, so tests can move time.
    """

    data: SandboxData
    clock: Callable[[], float] = time.monotonic
    pending_shape: str = "list"
    processing_mode: str = "close"
    cost_polls_before_ready: int = 1
    token_ttl_seconds: float = 3600.0
    rate_limit: int = 100
    rate_window_seconds: float = 60.0
    latency_seconds: float = 0.0
    requests: list[LoggedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._nonces: set[str] = set()
        self._windows: dict[str, _Window] = {}
        self._cost_queries: dict[str, _CostQuery] = {}
        self._token_counter = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "pending_shape" and value not in PENDING_SHAPES:
            raise ValueError(f"pending_shape must be one of {PENDING_SHAPES}: {value!r}")
        if name == "processing_mode" and value not in PROCESSING_MODES:
            raise ValueError(f"processing_mode must be one of {PROCESSING_MODES}: {value!r}")
        super().__setattr__(name, value)

    @property
    def credentials(self) -> Credentials:
        return self.data.credentials

    # --- test API -------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset(self) -> None:
        """Forget requests, faults, tokens, rate windows and poll counts; restore switches."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self._tokens.clear()
            self._nonces.clear()
            self._windows.clear()
            for query in self._cost_queries.values():
                query.polls = 0
        for name, value in _SWITCH_DEFAULTS.items():
            setattr(self, name, value)
        self.clock = time.monotonic

    def switches(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SWITCH_DEFAULTS}

    def set_switches(self, **values: Any) -> None:
        unknown = set(values) - set(_SWITCH_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown switch {sorted(unknown)[0]!r}")
        for name, value in values.items():
            setattr(self, name, value)

    def requests_for(
        self, operation: str | None = None, org_id: str | None = None
    ) -> list[LoggedRequest]:
        return [
            r
            for r in list(self.requests)
            if (operation is None or r.operation == operation)
            and (org_id is None or r.org_id == org_id)
        ]

    def expire_tokens(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True

    # --- internals used by the app ---------------------------------------------------

    def _log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _take_faults(
        self, operation: str | None, org_id: str | None, kinds: Iterable[str]
    ) -> list[Fault]:
        """Use up the latency faults and the first other fault that match, in order."""
        wanted = set(kinds)
        taken: list[Fault] = []
        terminal = False
        with self._lock:
            for fault in list(self.faults):
                if fault.kind not in wanted or not fault.matches(operation, org_id):
                    continue
                if fault.kind not in ("latency", "expire_tokens"):
                    if terminal:
                        continue
                    terminal = True
                taken.append(fault)
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
        return taken

    def _issue_token(self) -> str:
        value = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[value] = _Token(expires_at=self.clock() + self.token_ttl_seconds)
        return value

    def _token_valid(self, value: str) -> bool:
        token = self._tokens.get(value)
        return token is not None and not token.revoked and self.clock() < token.expires_at

    def _revoke(self, value: str) -> None:
        with self._lock:
            token = self._tokens.get(value)
            if token is not None:
                token.revoked = True

    def _new_nonce(self) -> str:
        nonce = secrets.token_hex(16)
        with self._lock:
            self._nonces.add(nonce)
        return nonce

    def _rate_remaining(self, org_id: str | None) -> int:
        window = self._windows.get(org_id) if org_id else None
        if window is None or self.clock() >= window.started + self.rate_window_seconds:
            return self.rate_limit
        return max(self.rate_limit - window.count, 0)

    def _count_request(self, org_id: str) -> int | None:
        """Count one request; None if it fits the window, else seconds until the window resets."""
        now = self.clock()
        with self._lock:
            window = self._windows.get(org_id)
            if window is None or now >= window.started + self.rate_window_seconds:
                window = self._windows[org_id] = _Window(started=now)
            if window.count >= self.rate_limit:
                return max(1, math.ceil(window.started + self.rate_window_seconds - now))
            window.count += 1
        return None

    def _new_cost_query(self, query: _CostQuery) -> str:
        with self._lock:
            self._token_counter += 1
            canonical = json.dumps(
                {
                    "org": query.org_id,
                    "start": query.start.isoformat(),
                    "end": query.end.isoformat(),
                    "groupBy": query.group_by,
                    "filters": {k: sorted(v) for k, v in query.filters.items()},
                },
                sort_keys=True,
            )
            token = hashlib.sha256(
                f"{self.data.seed}|{canonical}|{self._token_counter}".encode()
            ).hexdigest()
            self._cost_queries[token] = query
        return token


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
    """No response at all: the TCP connection is aborted with an RST.

    ASGI has no message for that, so this reaches the server's transport through
    the ``receive`` callable uvicorn hands the app (a bound method of its
    request cycle, which holds the transport), sets ``SO_LINGER`` to zero so
    closing sends an RST, and aborts. httpx then raises ``ReadError``
    (connection reset) or ``RemoteProtocolError`` (server disconnected).
    """

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_receive = scope.get("sandbox.receive", receive)
        transport = getattr(getattr(raw_receive, "__self__", None), "transport", None)
        if transport is None:
            raise RuntimeError("a reset fault needs uvicorn (its request cycle's transport)")
        commit = scope.get("sandbox.commit")
        if commit is not None:
            commit(None)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Wait for the server to notice the disconnect, so it does not log an unfinished response.
        while (await raw_receive())["type"] != "http.disconnect":
            pass


# --- per-request context -------------------------------------------------------------


class _Call:
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
        self.pretty = _bool_param(params, "pretty", default=False, envelope=False)
        self.envelope = _bool_param(params, "envelope", default=False, envelope=False)

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
        head, _, tail = text.partition(json.dumps(_ITEMS_MARKER))
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


_ITEMS_MARKER = "\x00sandbox-line-items\x00"


def _bool_param(params: Any, name: str, *, default: bool, envelope: bool = True) -> bool:
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


def _int_param(params: Any, name: str, *, default: int, low: int, high: int | None) -> int:
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


def _date_param(params: Any, name: str) -> date | None:
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


def _authenticate(call: _Call) -> bool:
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


def _fault_response(call: _Call, fault: Fault, csv_wanted: bool) -> Response:
    if fault.kind == "reset":
        return ResetResponse()
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

_Handler = Callable[[_Call, Org], Awaitable[Response]]

# Versioned media types each operation can answer with (see the spec).
_FORMATS: dict[Operation, tuple[str, ...]] = {
    Operation.LIST_INVOICES: ("json",),
    Operation.LIST_PENDING: ("json",),
    Operation.GET_INVOICE: ("json", "csv"),
    Operation.GET_INVOICE_CSV: ("csv",),
    Operation.CREATE_COST_QUERY: ("json",),
    Operation.GET_COST_RESULT: ("json", "csv"),
}


def _negotiate(call: _Call) -> str:
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


def _check_content_type(call: _Call) -> None:
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


def _check_path(call: _Call) -> None:
    for name, value in call.request.path_params.items():
        if name in ("orgId", "invoiceId"):
            ok = bool(_HEX24.fullmatch(value))
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


async def _run(call: _Call, handler: _Handler) -> Response:
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
    6. the org (404), the per-org rate limit (429; counted from here on), the
       Billing Viewer role (403);
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
            call.operation.value, call.org_id, ["status", "reset", "malformed", "latency"]
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
        retry_after = state._count_request(org.id)
        if retry_after is not None:
            raise ApiError(
                429,
                "RATE_LIMITED",
                f"Too many requests for organization {org.id}: at most {state.rate_limit} "
                f"every {state.rate_window_seconds:g} seconds.",
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


def _api_route(
    path: str, operation: Operation, handler: _Handler, state: SandboxState, method: str = "GET"
) -> Route:
    async def endpoint(request: Request) -> Response:
        call = _Call(request, state, operation)
        response = await _run(call, handler)
        if not isinstance(response, ResetResponse):
            response.headers["RateLimit-Limit"] = str(state.rate_limit)
            response.headers["RateLimit-Remaining"] = str(state._rate_remaining(call.org_id))
        return response

    return Route(API_PREFIX + path, endpoint, methods=[method], name=operation.value)


# --- operations ----------------------------------------------------------------------


async def _list_invoices(call: _Call, org: Org) -> Response:
    params = call.request.query_params
    items_per_page = _int_param(params, "itemsPerPage", default=100, low=1, high=500)
    page = _int_param(params, "pageNum", default=1, low=1, high=None)
    include_count = _bool_param(params, "includeCount", default=True)
    _bool_param(params, "viewLinkedInvoices", default=True)
    statuses = [s for value in params.getlist("statusNames") for s in value.split(",") if s]
    for status in statuses:
        if status not in _INVOICE_STATUSES:
            raise ApiError(
                400,
                "VALIDATION_ERROR",
                f"statusNames must be among {', '.join(_INVOICE_STATUSES)}, got {status!r}.",
                parameters=["statusNames", status],
            )
    from_date, to_date = _date_param(params, "fromDate"), _date_param(params, "toDate")
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


def _page_links(call: _Call, page: int, per_page: int, total: int) -> list[dict[str, str]]:
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


def _invoice_stream(call: _Call, invoice: Invoice, body: Any) -> Response:
    return call.json_stream(200, body, lambda: (item.to_json() for item in invoice.line_items()))


def _with_marker(call: _Call, invoice: Invoice) -> dict[str, Any]:
    doc = invoice.document(call.base_url)
    doc["lineItems"] = _ITEMS_MARKER
    return doc


async def _list_pending(call: _Call, org: Org) -> Response:
    doc = _with_marker(call, org.pending)
    if call.state.pending_shape == "object":
        return _invoice_stream(call, org.pending, doc)
    return _invoice_stream(call, org.pending, {"links": [], "results": [doc], "totalCount": 1})


def _find_invoice(call: _Call, org: Org) -> Invoice:
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


def _csv_response(call: _Call, chunks: Iterator[str] | str) -> Response:
    if isinstance(chunks, str):
        return Response(chunks.encode(), media_type=media_type(call.operation, "csv"))
    return StreamingResponse(
        (c.encode() for c in chunks), media_type=media_type(call.operation, "csv")
    )


async def _get_invoice(call: _Call, org: Org) -> Response:
    invoice = _find_invoice(call, org)
    if call.accepted == "csv":
        return _csv_response(call, invoice.csv_chunks())
    return _invoice_stream(call, invoice, _with_marker(call, invoice))


async def _get_invoice_csv(call: _Call, org: Org) -> Response:
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


async def _create_cost_query(call: _Call, org: Org) -> Response:
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
            bad = [v for v in values if not _HEX24.fullmatch(v)]
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
    query = _CostQuery(org.id, start, end, group_by, filters)
    return call.json({"token": call.state._new_cost_query(query)}, status=202)


async def _get_cost_result(call: _Call, org: Org) -> Response:
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


# --- OAuth ---------------------------------------------------------------------------


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


async def _oauth_client(request: Request, state: SandboxState) -> dict[str, str] | Response:
    """The form, once the client credentials (HTTP Basic, or form fields) checked out."""
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "The body must be form-encoded.")
    form = dict(parse_qsl(body.decode("latin-1")))
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            client_id = client_secret = None
    creds = state.credentials
    if not (
        client_id == creds.client_id
        and client_secret is not None
        and hmac.compare_digest(client_secret, creds.client_secret)
    ):
        return _oauth_error(401, "invalid_client", "Client authentication failed.")
    return form


async def _fault_for_oauth(
    request: Request, state: SandboxState, operation: str
) -> Response | None:
    for fault in state._take_faults(operation, None, ["status", "reset", "malformed", "latency"]):
        if fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "reset":
            return ResetResponse()
        elif fault.kind == "malformed":
            return Response(fault.body or b'{"access_token": "', media_type="application/json")
        else:
            assert fault.status is not None
            if fault.body is not None:
                return Response(
                    fault.body,
                    status_code=fault.status,
                    media_type=fault.content_type or "text/plain",
                )
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            return JSONResponse(
                {"error": "temporarily_unavailable", "error_description": "Injected fault."},
                status_code=fault.status,
                headers=headers,
            )
    return None


def _oauth_token_endpoint(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        _mark(request, OAUTH_TOKEN)
        form = await _oauth_client(request, state)
        if isinstance(form, Response):
            return form
        faulted = await _fault_for_oauth(request, state, OAUTH_TOKEN)
        if faulted is not None:
            return faulted
        grant = form.get("grant_type")
        if grant is None:
            return _oauth_error(400, "invalid_request", "grant_type is required.")
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant {grant!r}.")
        return JSONResponse(
            {
                "access_token": state._issue_token(),
                "expires_in": int(state.token_ttl_seconds),
                "token_type": "Bearer",
            },
            headers={"Cache-Control": "no-store"},
        )

    return endpoint


def _oauth_revoke_endpoint(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        _mark(request, OAUTH_REVOKE)
        form = await _oauth_client(request, state)
        if isinstance(form, Response):
            return form
        faulted = await _fault_for_oauth(request, state, OAUTH_REVOKE)
        if faulted is not None:
            return faulted
        if "token" not in form:
            return _oauth_error(400, "invalid_request", "token is required.")
        # RFC 7009: an unknown token is not an error.
        state._revoke(form["token"])
        return Response(status_code=200)

    return endpoint


def _mark(request: Request, operation: str) -> None:
    record = request.scope.get("sandbox.record")
    if record is not None:
        record["operation"] = operation


# --- sandbox control (no auth, not logged) -------------------------------------------


def _control_routes(state: SandboxState) -> list[Route]:
    async def requests(request: Request) -> Response:
        return JSONResponse([r.to_json() for r in list(state.requests)])

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.clear_faults()
            return Response(status_code=204)
        if request.method == "GET":
            return JSONResponse([f.to_json() for f in list(state.faults)])
        try:
            payload = await request.json()
            known = {f.name for f in fields(Fault)} - {"hits"}
            if not isinstance(payload, dict) or set(payload) - known:
                raise ValueError(f"a fault is a JSON object with fields among {sorted(known)}")
            fault = state.add_fault(Fault(**payload))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(fault.to_json(), status_code=201)

    async def switches(request: Request) -> Response:
        if request.method == "POST":
            try:
                payload = await request.json()
                if not isinstance(payload, dict):
                    raise ValueError("switches are a JSON object")
                state.set_switches(**payload)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(state.switches())

    async def reset(request: Request) -> Response:
        state.reset()
        return Response(status_code=204)

    async def info(request: Request) -> Response:
        return JSONResponse(sandbox_info(state, str(request.base_url).rstrip("/")))

    return [
        Route("/_sandbox/requests", requests, methods=["GET"]),
        Route("/_sandbox/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/switches", switches, methods=["GET", "POST"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/info", info, methods=["GET"]),
    ]


def sandbox_info(state: SandboxState, base_url: str) -> dict[str, Any]:
    data = state.data
    orgs = []
    for org in data.orgs():
        orgs.append(
            {
                "id": org.id,
                "name": org.name,
                "projects": [{"id": p.id, "name": p.name} for p in org.projects[:10]],
                "pendingInvoiceId": org.pending.id,
                "closedInvoiceIds": [i.id for i in org.closed],
            }
        )
    return {
        "baseUrl": base_url,
        "seed": data.seed,
        "today": data.today.isoformat(),
        "hugeOrgId": data.huge_org_id,
        "orgs": orgs,
        "credentials": asdict(data.credentials),
    }


# --- the app -------------------------------------------------------------------------


class _RequestLog:
    """Outermost ASGI layer: reads the body once, logs each request when its answer starts."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope["sandbox.receive"] = receive
        if scope["path"].startswith("/_sandbox/"):
            await self.app(scope, replay, send)
            return
        record: dict[str, Any] = {"operation": None, "org_id": None}
        committed = False

        def commit(status: int | None) -> None:
            nonlocal committed
            if committed:
                return
            committed = True
            self.state._log(_log_entry(scope, body, status, record))

        scope["sandbox.record"] = record
        scope["sandbox.commit"] = commit

        async def logged_send(message: Any) -> None:
            # Log before the answer leaves, so a client that got it always finds it logged.
            if message["type"] == "http.response.start":
                commit(message["status"])
            await send(message)

        try:
            await self.app(scope, replay, logged_send)
        finally:
            commit(None)


def _log_entry(
    scope: Scope, body: bytes, status: int | None, record: dict[str, Any]
) -> LoggedRequest:
    query: dict[str, str] = {}
    for key, value in parse_qsl(
        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
    ):
        query[key] = f"{query[key]},{value}" if key in query else value
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return LoggedRequest(
        method=scope["method"],
        path=scope["path"],
        query=query,
        headers=headers,
        body=body,
        status=status,
        operation=record["operation"],
        org_id=record["org_id"],
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code = {404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "UNEXPECTED_ERROR")
    detail = {
        404: f"Cannot find resource {request.url.path}.",
        405: f"Method {request.method} is not allowed on {request.url.path}.",
    }.get(status, exc.detail)
    body = {
        "error": status,
        "errorCode": code,
        "reason": HTTPStatus(status).phrase,
        "detail": detail,
        "parameters": [],
    }
    return JSONResponse(body, status_code=status, headers=exc.headers)


def create_app(state: SandboxState) -> ASGIApp:
    """The sandbox as an ASGI app (uvicorn with ``http="httptools"`` is what it is tested on)."""
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
    routes = [_api_route(path, op, handler, state, method) for path, op, handler, method in api]
    routes += [
        Route("/api/oauth/token", _oauth_token_endpoint(state), methods=["POST"]),
        Route("/api/oauth/revoke", _oauth_revoke_endpoint(state), methods=["POST"]),
        *_control_routes(state),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return _RequestLog(app, state)
