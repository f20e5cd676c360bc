"""What the sandbox remembers between requests: data, switches, faults, tokens, the request log."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from bot.atlas._media import Operation
from bot.sandbox.data import Credentials, SandboxData

# Pseudo operation names for the OAuth endpoints (request log and faults).
OAUTH_TOKEN = "oauthToken"
OAUTH_REVOKE = "oauthRevoke"
FAULT_KINDS = ("status", "reset", "close", "garbage", "malformed", "latency", "expire_tokens")
PENDING_SHAPES = ("list", "object")
PROCESSING_MODES = ("close", "silence")

_API_OPERATIONS = frozenset(op.value for op in Operation)

# Atlas's rate limits ("Atlas Administration API Rate Limits",
# https://www.mongodb.com/docs/atlas/api/api-rate-limit/; ATLAS-NOTES.md, "Errors and
# limits"): every endpoint is in an *endpoint set* with a *scope* (org, project, user, IP),
# and the endpoints of one set and scope share one token bucket: at most `capacity` tokens,
# one per request, `refillRate` added every `refillDurationSeconds`, a 429 with Retry-After
# when it is empty. Atlas does not publish the billing endpoints' sets; the sandbox puts the
# invoice reads in one and Cost Explorer (start and poll) in another, both scoped to the org
# in the path. Named as Atlas names a set in its 429 (its example: "api/atlas/v2/orgs").
ENDPOINT_SETS: dict[str, tuple[Operation, ...]] = {
    "api/atlas/v2/orgs/{orgId}/invoices": (
        Operation.LIST_INVOICES,
        Operation.LIST_PENDING,
        Operation.GET_INVOICE,
        Operation.GET_INVOICE_CSV,
    ),
    "api/atlas/v2/orgs/{orgId}/billing/costExplorer/usage": (
        Operation.CREATE_COST_QUERY,
        Operation.GET_COST_RESULT,
    ),
}
ENDPOINT_SET_OF: dict[Operation, str] = {
    op: name for name, ops in ENDPOINT_SETS.items() for op in ops
}

_SWITCH_DEFAULTS: dict[str, Any] = {
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


@dataclass
class Fault:
    """A misbehaviour injected into the next ``times`` matching requests.

    kind: ``status`` (answer ``status`` with an Atlas error body, or ``body``
    verbatim with ``content_type``; ``error_code``/``retry_after`` optional),
    ``reset`` (abort the TCP connection with an RST, no response at all),
    ``close`` (close the connection before sending any byte), ``garbage`` (send a line that
    is no HTTP status line, then close),
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
class CostQuery:
    """A Cost Explorer query the sandbox was asked for, kept under its token."""

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
class _Bucket:
    """One token bucket: what is left, and when Atlas last added its refill."""

    tokens: int
    refilled_at: float


@dataclass
class SandboxState:
    """Everything the sandbox knows: data, switches, faults, tokens and the request log.

    Switches (plain attributes; ``reset()`` restores them): ``pending_shape``
    (``list`` | ``object``), ``processing_mode`` (``close`` | ``silence``),
    ``cost_polls_before_ready``, ``token_ttl_seconds``, ``latency_seconds``, and the rate
    limit of every (org, endpoint set) bucket (``ENDPOINT_SETS``): ``rate_limit`` (its
    capacity, sent as ``RateLimit-Limit``), ``rate_refill`` tokens added every
    ``rate_refill_seconds`` (``rate_window_seconds`` is the old name of the latter), and
    ``rate_headers`` (False: no ``RateLimit-*`` headers, which Atlas may also omit).
    ``clock`` (monotonic seconds) drives token expiry and refills, so tests can move time.
    """

    data: SandboxData
    clock: Callable[[], float] = time.monotonic
    pending_shape: str = "list"
    processing_mode: str = "close"
    cost_polls_before_ready: int = 1
    token_ttl_seconds: float = 3600.0
    rate_limit: int = 100
    rate_refill: int = 100
    rate_refill_seconds: float = 60.0
    rate_headers: bool = True
    latency_seconds: float = 0.0
    requests: list[LoggedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._nonces: set[str] = set()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._cost_queries: dict[str, CostQuery] = {}
        self._token_counter = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "pending_shape" and value not in PENDING_SHAPES:
            raise ValueError(f"pending_shape must be one of {PENDING_SHAPES}: {value!r}")
        if name == "processing_mode" and value not in PROCESSING_MODES:
            raise ValueError(f"processing_mode must be one of {PROCESSING_MODES}: {value!r}")
        if name in ("rate_limit", "rate_refill") and not (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ):
            raise ValueError(f"{name} must be a whole number of tokens, at least 1: {value!r}")
        if name == "rate_refill_seconds" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        ):
            raise ValueError(f"rate_refill_seconds must be above 0: {value!r}")
        super().__setattr__(name, value)

    @property
    def rate_window_seconds(self) -> float:
        """The old name of ``rate_refill_seconds`` (kept for the benches)."""
        return self.rate_refill_seconds

    @rate_window_seconds.setter
    def rate_window_seconds(self, value: float) -> None:
        self.rate_refill_seconds = value

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
        """Forget requests, faults, tokens, rate buckets and poll counts; restore switches."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self._tokens.clear()
            self._nonces.clear()
            self._buckets.clear()
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

    def _refilled(self, bucket: _Bucket, now: float) -> _Bucket:
        """Add the refills due by ``now``: ``rate_refill`` per whole ``rate_refill_seconds``."""
        ticks = math.floor((now - bucket.refilled_at) / self.rate_refill_seconds)
        if ticks > 0:
            bucket.tokens += ticks * self.rate_refill
            bucket.refilled_at += ticks * self.rate_refill_seconds
        bucket.tokens = min(bucket.tokens, self.rate_limit)
        return bucket

    def _rate_remaining(self, org_id: str | None, endpoint_set: str) -> int:
        """Tokens left in the bucket (a bucket not used yet is full)."""
        with self._lock:
            bucket = self._buckets.get((org_id, endpoint_set)) if org_id else None
            if bucket is None:
                return self.rate_limit
            return self._refilled(bucket, self.clock()).tokens

    def _take_token(self, org_id: str, endpoint_set: str) -> int | None:
        """Take one token; None if there was one, else the whole seconds until the next refill
        (Atlas's Retry-After: its example says 55 with a 60 s refill, the time to the refill)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get((org_id, endpoint_set))
            if bucket is None:
                bucket = self._buckets[org_id, endpoint_set] = _Bucket(self.rate_limit, now)
            self._refilled(bucket, now)
            if bucket.tokens < 1:
                return max(1, math.ceil(bucket.refilled_at + self.rate_refill_seconds - now))
            bucket.tokens -= 1
        return None

    def _new_cost_query(self, query: CostQuery) -> str:
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
