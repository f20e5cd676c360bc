"""A per-organisation request budget that follows Atlas's rate-limit headers.

Atlas limits requests per organisation per minute and says so in
``RateLimit-Limit`` / ``RateLimit-Remaining``. The budget keeps a sliding
window of recent request times per org, sized by the last ``RateLimit-Limit``
seen (a cautious default until then), and makes a caller wait when the window
is full or when Atlas said nothing remains. Waiting here is cheaper than a 429.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class _OrgWindow:
    limit: int
    sent: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RequestBudget:
    """Admits requests per org so that no org exceeds what Atlas allows."""

    def __init__(
        self,
        *,
        default_limit: int = 100,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._default_limit = default_limit
        self._window = window_seconds
        self._clock = clock
        self._sleep = sleep
        self._orgs: dict[str, _OrgWindow] = {}
        self.waited_seconds = 0.0

    def _org(self, org_id: str) -> _OrgWindow:
        if org_id not in self._orgs:
            self._orgs[org_id] = _OrgWindow(limit=self._default_limit)
        return self._orgs[org_id]

    async def acquire(self, org_id: str) -> None:
        """Wait until one more request to ``org_id`` fits, then count it."""
        org = self._org(org_id)
        async with org.lock:
            while True:
                now = self._clock()
                while org.sent and org.sent[0] <= now - self._window:
                    org.sent.popleft()
                wait = org.blocked_until - now
                if len(org.sent) >= org.limit:
                    wait = max(wait, org.sent[0] + self._window - now)
                if wait <= 0:
                    org.sent.append(now)
                    return
                self.waited_seconds += wait
                await self._sleep(wait)

    def observe(self, org_id: str, response: httpx.Response) -> None:
        """Learn the org's limit and what remains of it from a response's headers."""
        org = self._org(org_id)
        limit = _int_header(response, "RateLimit-Limit")
        if limit and limit > 0:
            org.limit = limit
        remaining = _int_header(response, "RateLimit-Remaining")
        if remaining is not None and remaining <= 0:
            # Atlas counts its own window; wait for the oldest of ours to age out.
            start = org.sent[0] if org.sent else self._clock()
            org.blocked_until = max(org.blocked_until, start + self._window)

    def block(self, org_id: str, seconds: float) -> None:
        """Atlas answered 429 with ``Retry-After``: nobody asks that org again before then."""
        org = self._org(org_id)
        org.blocked_until = max(org.blocked_until, self._clock() + seconds)


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
