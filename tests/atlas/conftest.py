"""Builders for Atlas clients aimed at the sandbox, with every call checked against the spec."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from bot.atlas import AtlasClient, ServiceAccountAuth, api_key_auth
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


ClientFactory = Callable[..., AtlasClient]


@pytest.fixture
async def make_client(sandbox: SandboxServer) -> AsyncIterator[ClientFactory]:
    """``make_client(auth="oauth"|"digest"|"no-role", **AtlasClient options)``."""
    made: list[AtlasClient] = []
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
        )
        options.setdefault("max_retries", 2)
        client = AtlasClient(auth=credentials, http_client=http, **options)
        made.append(client)
        client._test_http = http  # closed below with the client
        return client

    yield factory
    for client in made:
        await client.aclose()
        await client._test_http.aclose()


def api_requests(sandbox: SandboxServer) -> list:
    """What reached the Atlas API paths (OAuth and control endpoints left out)."""
    return [r for r in sandbox.state.requests if r.path.startswith("/api/atlas/v2/")]


def assert_all_requests_in_spec(sandbox: SandboxServer) -> None:
    """Every request the sandbox received on an Atlas path, as received, obeys the spec."""
    for r in api_requests(sandbox):
        query = "&".join(f"{k}={v}" for k, v in r.query.items())
        url = r.path + (f"?{query}" if query else "")
        validate_request(r.method, url, r.headers, r.body or None)
