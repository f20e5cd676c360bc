"""Authentication for the Atlas Admin API: service accounts (OAuth 2) and API keys (Digest).

Each is an ``httpx.Auth`` whose flow owns its whole handshake, so no other code
knows about tokens or challenges. API keys use httpx's own ``DigestAuth``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from bot.atlas._errors import AtlasTransportError, Unauthorized, error_class
from bot.core.retry_after import parse_retry_after

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)

TOKEN_PATH = "/api/oauth/token"
REVOKE_PATH = "/api/oauth/revoke"


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


class ServiceAccountAuth(httpx.Auth):
    """OAuth 2 client credentials with a cached bearer token.

    The token is fetched on first use, refreshed ``refresh_margin`` seconds
    before it expires, and fetched again once if Atlas answers 401 (revoked or
    expired early). Concurrent requests share one fetch through a lock.
    Token requests go through ``token_client`` (the Atlas client's own
    ``httpx.AsyncClient``, bound with ``bind``) so they share its pool and
    timeouts, and are counted with its requests (operations ``token``, ``revoke``).
    """

    requires_response_body = False

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._token: _Token | None = None
        self._lock: asyncio.Lock | None = None
        self._http: httpx.AsyncClient | None = None
        self._requests: Counter | None = None
        self.fetches = 0

    def bind(self, http: httpx.AsyncClient, *, request_counter: Counter | None = None) -> None:
        self._http = http
        self._requests = request_counter

    def _count(self, operation: str, status: str) -> None:
        if self._requests is not None:
            self._requests.labels(operation=operation, status=status).inc()

    def sync_auth_flow(  # pragma: no cover - async only
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("ServiceAccountAuth works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._current_token(stale=None)
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code == 401:
            # Revoked or expired before we expected: fetch a new one, retry once.
            token = await self._current_token(stale=token)
            request.headers["Authorization"] = f"Bearer {token.value}"
            yield request

    async def _current_token(self, *, stale: _Token | None) -> _Token:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            token = self._token
            # Fresh: a token we have that is not the one the caller found stale.
            if (
                token is not None
                and token is not stale
                and self._clock() < token.expires_at - self._refresh_margin
            ):
                return token
            self._token = await self._fetch()
            return self._token

    async def _fetch(self) -> _Token:
        if self._http is None:
            raise RuntimeError("ServiceAccountAuth.bind() was not called")
        self.fetches += 1
        try:
            response = await self._http.post(
                TOKEN_PATH,
                data={"grant_type": "client_credentials"},
                auth=httpx.BasicAuth(self._client_id, self._client_secret),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            self._count("token", "transport_error")
            raise AtlasTransportError(
                f"could not reach the Atlas token endpoint: {type(exc).__name__}"
                f"{': ' + str(exc) if str(exc) else ''}"
            ) from exc
        status = response.status_code
        self._count("token", str(status))
        if status == 429 or status >= 500:
            # Atlas is busy or failing, not refusing the credentials: the client retries.
            raise error_class(status)(
                status,
                error_code="TOKEN_ENDPOINT_UNAVAILABLE",
                detail="the Atlas token endpoint is unavailable",
                body=response.text[:500],
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status != 200:
            raise Unauthorized(
                response.status_code,
                error_code="INVALID_SERVICE_ACCOUNT",
                detail="Atlas refused the service account's client ID and secret",
                body=response.text[:500],
            )
        try:
            payload = response.json()
            value = str(payload["access_token"])
            lifetime = float(payload.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as exc:
            raise AtlasTransportError("the Atlas token endpoint answered without a token") from exc
        return _Token(value=value, expires_at=self._clock() + lifetime)

    async def revoke(self) -> None:
        """Revoke the cached token, if any (best effort, at shutdown)."""
        token, self._token = self._token, None
        if token is None or self._http is None:
            return
        try:
            response = await self._http.post(
                REVOKE_PATH,
                data={"token": token.value, "token_type_hint": "access_token"},
                auth=httpx.BasicAuth(self._client_id, self._client_secret),
            )
            self._count("revoke", str(response.status_code))
        except httpx.HTTPError as exc:
            self._count("revoke", "transport_error")
            # The token expires by itself within the hour; failing to revoke is only logged.
            log.info("could not revoke the Atlas access token: %s", exc)


def api_key_auth(public_key: str, private_key: str) -> httpx.DigestAuth:
    """An Atlas programmatic API key pair: HTTP Digest, public key as the user name."""
    return httpx.DigestAuth(public_key, private_key)
