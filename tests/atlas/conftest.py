"""Builders for Atlas clients aimed at the sandbox, with every call checked against the spec."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bot.atlas import AtlasClient, AtlasTransport, ServiceAccountAuth, api_key_auth
from bot.sandbox import SandboxServer
from tests.contract import contract_hooks, validate_request


class FakeTime:
    """A clock and a sleep that agree: sleeping advances the clock, no real waiting."""

    def __init__(self) -> None:
        self.now = 10_000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


class VirtualTime:
    """A clock and a sleep for concurrent tasks: time moves only while every task is asleep.

    ``FakeTime`` adds each sleep to the clock, which is right for one task at a time; with
    several, their sleeps would add up. Here ``sleep`` waits for the clock to reach its end,
    and ``gather`` runs the tasks, moving the clock to the earliest wake-up whenever each
    unfinished task is asleep (not when one is waiting for a real answer over HTTP).
    """

    def __init__(self) -> None:
        self.now = 10_000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._seq, future))
        await future

    async def gather(self, *calls: Awaitable[Any], bound: float = 20.0) -> list[Any]:
        tasks = [asyncio.ensure_future(call) for call in calls]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + bound
        asleep_before = False
        while not all(task.done() for task in tasks):
            assert loop.time() < give_up, "VirtualTime.gather: the tasks never finished"
            await asyncio.sleep(0.002)  # real time: lets answers over HTTP arrive
            self._sleepers = [s for s in self._sleepers if not s[2].done()]
            heapq.heapify(self._sleepers)
            busy = sum(not task.done() for task in tasks)
            asleep = bool(self._sleepers) and len(self._sleepers) >= busy
            # Twice in a row: a task woken otherwise (an event) takes a few turns of the loop
            # to cancel its sleep, and must not be counted as asleep meanwhile.
            if asleep and asleep_before:
                self.now = max(self.now, self._sleepers[0][0])
                while self._sleepers and self._sleepers[0][0] <= self.now:
                    heapq.heappop(self._sleepers)[2].set_result(None)
                asleep = False
            asleep_before = asleep
        return [task.result() for task in tasks]


@pytest.fixture
def virtual_time() -> VirtualTime:
    return VirtualTime()


ClientFactory = Callable[..., AtlasClient]


@pytest.fixture
async def make_client(sandbox: SandboxServer) -> AsyncIterator[ClientFactory]:
    """``make_client(auth="oauth"|"digest"|"no-role", **AtlasClient options)``."""
    made: list[tuple[AtlasClient, httpx.AsyncClient]] = []
    creds = sandbox.data.credentials

    def factory(auth: str = "oauth", *, check_responses: bool = True, **options) -> AtlasClient:
        if auth == "oauth":
            credentials: httpx.Auth = ServiceAccountAuth(creds.client_id, creds.client_secret)
        elif auth == "digest":
            credentials = api_key_auth(creds.public_key, creds.private_key)
        elif auth == "no-role":
            credentials = api_key_auth(creds.no_role_public_key, creds.no_role_private_key)
        else:
            raise ValueError(auth)
        http = httpx.AsyncClient(
            base_url=sandbox.base_url,
            timeout=10,
            event_hooks=contract_hooks(requests=True, responses=check_responses),
            transport=AtlasTransport(),  # as AtlasClient's own: it tells a 102 from a fault
        )
        options.setdefault("max_retries", 2)
        client = AtlasClient(auth=credentials, http_client=http, **options)
        made.append((client, http))  # the http client is closed below with the client
        # For tests that change the injected client's settings (AtlasClient has no such field).
        setattr(client, "_test_http", http)  # noqa: B010
        return client

    yield factory
    for client, http in made:
        await client.aclose()
        await http.aclose()


def api_requests(sandbox: SandboxServer) -> list:
    """What reached the Atlas API paths (OAuth and control endpoints left out)."""
    return [r for r in sandbox.state.requests if r.path.startswith("/api/atlas/v2/")]


def assert_all_requests_in_spec(sandbox: SandboxServer) -> None:
    """Every request the sandbox received on an Atlas path, as received, obeys the spec."""
    for r in api_requests(sandbox):
        query = "&".join(f"{k}={v}" for k, v in r.query.items())
        url = r.path + (f"?{query}" if query else "")
        validate_request(r.method, url, r.headers, r.body or None)
