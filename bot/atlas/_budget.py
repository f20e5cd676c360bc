"""Token buckets per organisation and endpoint set, kept in step with Atlas's own.

How Atlas limits requests (its page "Atlas Administration API Rate Limits",
https://www.mongodb.com/docs/atlas/api/api-rate-limit/, and ATLAS-NOTES.md, "Errors and
limits"):

- every endpoint belongs to an *endpoint set* and a *scope* (org, project, user or IP);
  the endpoints of one set and scope share one token bucket;
- a bucket holds at most ``capacity`` tokens, each request takes one, and Atlas adds
  ``refillRate`` tokens every ``refillDurationSeconds`` (up to the capacity); an empty
  bucket answers 429 with ``Retry-After`` (the page's example: "Please retry after 55
  seconds. Request capacity: 10. Refill rate: 5 per 60 seconds.", errorCode
  ``RATE_LIMITED_TOKEN_BUCKET``, ``parameters`` ``[set, 55, 10, 5, 60]``);
- ``RateLimit-Limit`` is the capacity and ``RateLimit-Remaining`` the tokens left, but
  "Atlas may not always return response headers": handle them missing.

So the budget keeps one bucket per (org, endpoint set) (``ENDPOINT_SETS``: the billing
operations are scoped to an org, and this client assumes the invoice reads are one set and
Cost Explorer another), and:

- **first request**: a bucket never answered lets one request go, and waits for its answer
  before any other (so a first burst cannot overrun a bucket smaller than assumed);
- **capacity** is learned from ``RateLimit-Limit`` (``default_capacity`` when Atlas sends
  no headers);
- **tokens** are Atlas's ``RateLimit-Remaining`` whenever a response carries it, minus the
  requests still in flight; between answers every request admitted takes one. Atlas's count
  is the truth: it includes refills the budget did not model and requests of other
  processes using the same org. A response older than one already applied may only lower
  the count (it was counted before the newer one);
- **refill**: Atlas does not say its refill in headers, only in a 429's body. Until one
  came, the budget credits one token (a probe) a whole ``refill_seconds`` after it last saw
  the bucket empty: one interval later Atlas has refilled at least once (if its interval is
  at most that long), so the probe meets no 429, and its answer's ``RateLimit-Remaining`` tells how many more may go. Once a
  429's body named the refill (or ``refill=`` was configured), that many are credited per
  interval. A bucket that never sent headers (nothing to resync from) is credited
  ``default_refill`` per ``refill_seconds``. Defaults: Atlas's own example, 10 tokens, 5
  per 60 s;
- **429**: the bucket is empty until ``Retry-After`` (the seconds until Atlas refills), and
  what the 429's body says about the bucket is learned. A 429 without ``Retry-After``
  (Atlas documents one on every 429) leaves the timing to the caller's backoff.

A caller that cannot wait long (a job holding a lease) passes ``max_wait``: when the next
token is further away than that, ``acquire`` raises ``OverBudget`` with the seconds until
it would come, instead of sleeping.

The buckets are per process: replicas share Atlas's bucket through its
``RateLimit-Remaining`` only (docs/ATLAS-FAULTS.md, "Known gaps").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bot.atlas._media import Operation
from bot.core.retry_after import parse_retry_after

# The endpoint set this client assumes each operation is in (Atlas does not publish the
# billing endpoints' sets; the sandbox models the same split, tests/atlas/test_budget.py
# checks that they agree). A coarser guess than Atlas's own would only be more cautious.
INVOICES = "invoices"
COST_EXPLORER = "costExplorer"
ENDPOINT_SETS: dict[Operation, str] = {
    Operation.LIST_INVOICES: INVOICES,
    Operation.LIST_PENDING: INVOICES,
    Operation.GET_INVOICE: INVOICES,
    Operation.GET_INVOICE_CSV: INVOICES,
    Operation.CREATE_COST_QUERY: COST_EXPLORER,
    Operation.GET_COST_RESULT: COST_EXPLORER,
}

# Atlas's 429 detail, as its rate-limit page shows it (read when ``parameters`` is absent).
_DETAIL = re.compile(
    r"Request capacity: (\d+)\. Refill rate: (\d+) per (\d+(?:\.\d+)?) seconds", re.IGNORECASE
)


class OverBudget(Exception):
    """The next token is further away than the caller's ``max_wait``."""

    def __init__(self, org_id: str, endpoint_set: str, seconds: float) -> None:
        super().__init__(f"{endpoint_set} of org {org_id}: the next request fits in {seconds:.1f}s")
        self.org_id = org_id
        self.endpoint_set = endpoint_set
        self.seconds = seconds


@dataclass(frozen=True)
class Ticket:
    """One admitted request: hand it back with its answer (``observe``) or without (``release``)."""

    org_id: str
    endpoint_set: str
    seq: int


@dataclass
class _Bucket:
    capacity: int
    tokens: int
    refill: int  # tokens credited per refill_seconds: known, default, or a probe (1)
    refill_seconds: float
    next_refill: float  # when the budget next credits tokens itself
    refill_known: bool = False  # from a 429's body or configured
    heard: bool = False  # Atlas sent RateLimit-Remaining for this bucket at least once
    cold: bool = True  # no answer yet: one request goes first, to learn the bucket
    blocked_until: float = 0.0
    in_flight: set[int] = field(default_factory=set)
    applied_seq: int = -1  # the newest admission whose answer set ``tokens``
    # Callers waiting for a refill, woken early when an answer changes the count. Plain
    # futures, made on the waiter's own loop (an Event would bind to the first loop).
    waiters: set[asyncio.Future[None]] = field(default_factory=set)

    def credit(self) -> int:
        """Tokens one refill interval brings, as far as the budget may assume."""
        if self.refill_known or not self.heard:
            return self.refill
        return 1  # a probe: its answer says how many Atlas really has

    def wake(self) -> None:
        """Waiters re-check now (more tokens, or a later block)."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class RequestBudget:
    """Admits requests per (org, endpoint set) so that none meets an empty Atlas bucket."""

    def __init__(
        self,
        *,
        default_capacity: int = 10,
        default_refill: int = 5,
        refill_seconds: float = 60.0,
        refill: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if default_capacity < 1 or default_refill < 1 or refill_seconds <= 0:
            raise ValueError("capacity and refill must be at least 1, refill_seconds above 0")
        if refill is not None and refill < 1:
            raise ValueError("refill must be at least 1")
        self._default_capacity = default_capacity
        self._default_refill = refill if refill is not None else default_refill
        self._refill_known = refill is not None
        self._refill_seconds = refill_seconds
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._seq = 0
        self.waited_seconds = 0.0

    def _bucket(self, org_id: str, endpoint_set: str) -> _Bucket:
        key = (org_id, endpoint_set)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(
                capacity=self._default_capacity,
                tokens=1,
                refill=self._default_refill,
                refill_seconds=self._refill_seconds,
                next_refill=self._clock() + self._refill_seconds,
                refill_known=self._refill_known,
            )
        return bucket

    def tokens(self, org_id: str, endpoint_set: str) -> int:
        """What the budget believes is left now (for tests and logs)."""
        bucket = self._bucket(org_id, endpoint_set)
        self._refill(bucket, self._clock())
        return bucket.tokens

    def _refill(self, bucket: _Bucket, now: float) -> None:
        if now < bucket.next_refill:
            return
        ticks = math.floor((now - bucket.next_refill) / bucket.refill_seconds) + 1
        bucket.tokens = min(bucket.capacity, bucket.tokens + ticks * bucket.credit())
        bucket.next_refill += ticks * bucket.refill_seconds

    async def acquire(
        self, org_id: str, endpoint_set: str, *, max_wait: float | None = None
    ) -> Ticket:
        """Wait for a token of the org's endpoint set and take it.

        ``max_wait``: raise ``OverBudget`` rather than wait longer than this in all.
        """
        bucket = self._bucket(org_id, endpoint_set)
        waited = 0.0
        while True:
            now = self._clock()
            self._refill(bucket, now)
            if now >= bucket.blocked_until and bucket.tokens >= 1:
                bucket.tokens -= 1
                self._seq += 1
                bucket.in_flight.add(self._seq)
                return Ticket(org_id, endpoint_set, self._seq)
            if bucket.tokens >= 1:
                wait = bucket.blocked_until - now
            else:
                wait = max(bucket.blocked_until, bucket.next_refill) - now
            if max_wait is not None and waited + wait > max_wait:
                raise OverBudget(org_id, endpoint_set, wait)
            started = self._clock()
            await self._pause(bucket, wait)
            slept = max(self._clock() - started, 0.0)
            waited += slept
            self.waited_seconds += slept

    async def _pause(self, bucket: _Bucket, seconds: float) -> None:
        """Sleep ``seconds``, or less if an answer brings tokens back first."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        bucket.waiters.add(woken)
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({woken, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            bucket.waiters.discard(woken)
            woken.cancel()
            if not timer.done():
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer

    def release(self, ticket: Ticket) -> None:
        """The request got no answer: its token stays spent (Atlas may have counted it)."""
        bucket = self._bucket(ticket.org_id, ticket.endpoint_set)
        bucket.in_flight.discard(ticket.seq)
        if bucket.cold and not bucket.in_flight and bucket.tokens < 1:
            bucket.tokens = 1  # nothing learned: the next request is the first again
            bucket.wake()

    def observe(
        self, ticket: Ticket, response: httpx.Response, *, status: int | None = None
    ) -> None:
        """Learn from an answer's headers (and a 429's body) what Atlas's bucket holds.

        ``status``: the answer's real status when it differs from the HTTP one
        (``envelope=true`` puts a 429 in an HTTP 200).
        """
        limited = (status if status is not None else response.status_code) == 429
        bucket = self._bucket(ticket.org_id, ticket.endpoint_set)
        bucket.in_flight.discard(ticket.seq)
        now = self._clock()
        self._refill(bucket, now)
        before = bucket.tokens
        limit = _int_header(response, "RateLimit-Limit")
        if limit is not None and limit > 0:
            bucket.capacity = limit
            bucket.tokens = min(bucket.tokens, limit)
        remaining = _int_header(response, "RateLimit-Remaining")
        if bucket.cold:
            bucket.cold = False
            if remaining is None:  # no headers to learn from: assume the default bucket
                bucket.tokens = max(0, bucket.capacity - 1 - len(bucket.in_flight))
        if remaining is not None and remaining >= 0:
            bucket.heard = True
            # Requests admitted but unanswered may not be in Atlas's count yet: take them off.
            told = max(0, min(remaining, bucket.capacity) - len(bucket.in_flight))
            if ticket.seq > bucket.applied_seq:
                bucket.applied_seq = ticket.seq
                bucket.tokens = told
                # Atlas's refills so far are in ``remaining``: the next one is an interval away.
                bucket.next_refill = now + bucket.refill_seconds
            else:
                bucket.tokens = min(bucket.tokens, told)
        if limited:
            self._exhausted(bucket, now, response)
        if bucket.tokens > before or limited:
            bucket.wake()

    def _exhausted(self, bucket: _Bucket, now: float, response: httpx.Response) -> None:
        _learn_from_body(bucket, response)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        # Without Retry-After (Atlas documents one on every 429) the caller's backoff decides
        # when to try again: one probe may go then.
        wait = retry_after if retry_after is not None else 0.0
        bucket.tokens = 0
        bucket.blocked_until = max(bucket.blocked_until, now + wait)
        # Retry-After is when Atlas refills: the budget credits its tokens then.
        bucket.next_refill = now + wait


def _learn_from_body(bucket: _Bucket, response: httpx.Response) -> None:
    """A 429's body names the bucket: ``parameters`` ``[set, retryAfter, capacity,
    refillRate, refillDurationSeconds]``, and the same numbers in ``detail``."""
    try:
        body: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return
    if isinstance(body, dict) and isinstance(body.get("content"), dict):
        body = body["content"]  # enveloped
    if not isinstance(body, dict):
        return
    numbers: tuple[float, float, float] | None = None
    params = body.get("parameters")
    if (
        isinstance(params, list)
        and len(params) >= 5
        and all(isinstance(p, int | float) and not isinstance(p, bool) for p in params[2:5])
    ):
        numbers = (float(params[2]), float(params[3]), float(params[4]))
    elif isinstance(body.get("detail"), str):
        match = _DETAIL.search(body["detail"])
        if match:
            numbers = (float(match[1]), float(match[2]), float(match[3]))
    if numbers is None:
        return
    capacity, refill, seconds = numbers
    if capacity >= 1 and refill >= 1 and seconds > 0:
        bucket.capacity = int(capacity)
        bucket.refill = int(refill)
        bucket.refill_seconds = seconds
        bucket.refill_known = True


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
