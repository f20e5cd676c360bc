"""The one dependencies object, built at start-up and handed to handlers and jobs.

Tests build the same object around fakes (the sandbox Atlas, a fake Slack Web
API, a temporary database); nothing here is a module-level global.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
from prometheus_client import Counter
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import HttpRequest, HttpResponse, RetryState
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.atlas import AtlasClient, AtlasError
from bot.core import version
from bot.core.config import Settings
from bot.core.redaction import register_secret
from bot.core.retry_after import parse_retry_after
from bot.core.secrets import SecretBox, SecretError, key_file, load_or_create_key
from bot.core.singleflight import SingleFlight
from bot.runtime.background import Background
from bot.runtime.metrics import Metrics, slack_error_label
from storage import Database, credentials
from storage.models import CredentialKind, OrgCredential

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class CountingWebClient(AsyncWebClient):
    """``AsyncWebClient`` that counts each failed Web API call in ``errors`` and re-raises.

    ``api_call`` is where every method (``chat_postMessage``, ``users_info``, …) ends,
    after slack_sdk's own retries, so one failed call is counted once. The file upload
    step of ``files_upload_v2`` posts to its upload URL outside ``api_call`` and is
    counted as ``files.upload``.
    """

    def __init__(self, *args: Any, errors: Counter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._errors = errors

    def _count(self, method: str, error: str) -> None:
        self._errors.labels(method=method, error=error).inc()

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        try:
            return await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            response = exc.response
            error = response.get("error") if response is not None else None
            status = getattr(response, "status_code", None)
            self._count(api_method, slack_error_label(error, status))
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._count(api_method, type(exc).__name__)
            raise

    async def _upload_file(self, **kwargs: Any) -> Any:
        try:
            result = await super()._upload_file(**kwargs)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._count("files.upload", type(exc).__name__)
            raise
        if result.status != 200:
            self._count("files.upload", slack_error_label(None, result.status))
        return result


# The longest Retry-After slack_sdk may sleep inside one call. Longer waits are left to the
# caller: the outbox and the poll job reschedule (honouring Retry-After), commands say "try
# again later". Three in-call waits then stay well inside the poll job's 30 s lease and the
# outbox's 120 s one, so a message is never re-claimed by another replica mid-wait.
MAX_INLINE_RETRY_AFTER = 5.0


class ShortRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's 429 retry, only for waits of at most ``MAX_INLINE_RETRY_AFTER`` seconds."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        values = {k.lower(): v for k, v in response.headers.items()}.get("retry-after")
        if not values:
            return True  # slack_sdk waits 1 s when Slack names no time
        seconds = parse_retry_after(values[0])
        return seconds is not None and seconds <= MAX_INLINE_RETRY_AFTER


def slack_client(
    settings: Settings, token: str | None = None, *, metrics: Metrics | None = None
) -> AsyncWebClient:
    """The Web API client with slack_sdk's retry handlers (they are off by default); with
    ``metrics``, one that counts its failures in ``billing_bot_slack_errors_total``."""
    options: dict[str, Any] = {
        "token": token or settings.SLACK_BOT_TOKEN,
        "base_url": settings.SLACK_API_URL,
        # slack_sdk appends its own, Python's and the OS's product tokens to ours.
        "user_agent_prefix": version.user_agent(),
        "retry_handlers": [
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            ShortRateLimitRetryHandler(max_retry_count=3),
        ],
    }
    if metrics is None:
        return AsyncWebClient(**options)
    return CountingWebClient(errors=metrics.slack_errors, **options)


def worker_name() -> str:
    """Who holds a lease: host and process, so a log line says which replica did what."""
    return f"{socket.gethostname()}:{os.getpid()}"


class UnreadableCredentials(AtlasError):
    """An org's stored credentials cannot be decrypted with this process's key (see the message)."""


def atlas_client_with(
    settings: Settings, *, kind: str, public_id: str, secret: str, **options: Any
) -> AtlasClient:
    """An Atlas client for one set of credentials (a service account or an API key pair)."""
    register_secret(secret)  # stored or just typed in: either way kept out of the logs
    if kind == CredentialKind.SERVICE_ACCOUNT:
        return AtlasClient.with_credentials(
            base_url=settings.MONGODB_ATLAS_BASE_URL,
            client_id=public_id,
            client_secret=secret,
            **options,
        )
    return AtlasClient.with_credentials(
        base_url=settings.MONGODB_ATLAS_BASE_URL,
        public_key=public_id,
        private_key=secret,
        **options,
    )


@dataclass(frozen=True)
class Deps:
    """Settings, clients, database and clock: everything a handler or job may use.

    ``secrets`` encrypts stored Atlas credentials; when not given, the key is
    loaded (or generated, see ``bot.core.secrets``) the first time it is needed.
    ``metrics`` is what ``GET /metrics`` shows; the Atlas clients built here for
    stored credentials count their requests into it.
    """

    settings: Settings
    atlas: AtlasClient
    db: Database
    slack: AsyncWebClient
    clock: Callable[[], datetime] = utcnow
    worker: str = field(default_factory=worker_name)
    secrets: SecretBox | None = None
    metrics: Metrics = field(default_factory=Metrics, repr=False, compare=False)
    # Listeners' work after their acknowledgement (awaited in place in the shell).
    background: Background = field(default_factory=Background, repr=False, compare=False)
    # Month-to-date reads in flight, by org: concurrent `pending`s share one Atlas request.
    pending_reads: SingleFlight = field(default_factory=SingleFlight, repr=False, compare=False)
    # Clients built from stored credentials, by (org, credential row, credential version):
    # a replaced credential gets a new client; all are closed in aclose.
    org_clients: dict[tuple[str, int, int], AtlasClient] = field(
        default_factory=dict, repr=False, compare=False
    )
    _loaded_secrets: dict[str, SecretBox] = field(default_factory=dict, repr=False, compare=False)

    def today(self) -> date:
        return self.clock().date()

    def secret_box(self) -> SecretBox:
        """The box for stored credentials: ``secrets``, else one around ``BOT_SECRET_KEY``/the key file.

        Raises ``SecretError`` when the key is malformed or the key file cannot be written.
        """
        if self.secrets is not None:
            return self.secrets
        box = self._loaded_secrets.get("box")
        if box is None:
            settings = self.settings
            source = (
                "BOT_SECRET_KEY"
                if settings.BOT_SECRET_KEY
                else f"the generated key in {key_file(settings)}"
            )
            box = SecretBox(load_or_create_key(settings), source=source)
            self._loaded_secrets["box"] = box
        return box

    def atlas_for(self, org_id: str) -> OrgAtlas:
        """The Atlas operations for one org: with its stored credentials if an admin connected
        some (``connect ORG_ID``), else with the configured ones (``atlas``).

        The stored credentials are looked up at each call, so a ``connect`` on another
        replica takes effect here too.
        """
        return OrgAtlas(self, org_id)

    async def atlas_client(self, org_id: str) -> AtlasClient:
        """The client ``atlas_for(org_id)`` uses right now (one database read)."""
        try:
            row = await self.db.run(credentials.get_credential, org_id=org_id)
        except ValueError:
            return self.atlas  # not an org ID: the client refuses it with InvalidInput
        if row is None:
            return self.atlas
        assert row.id is not None
        key = (row.org_id, row.id, row.version)
        client = self.org_clients.get(key)
        if client is None:
            # No await between the lookup and the insert: one client per version.
            client = self._client_from(row)
            self.org_clients[key] = client
        return client

    def _client_from(self, row: OrgCredential) -> AtlasClient:
        try:
            box = self.secret_box()
            if row.key_id != box.key_id:
                raise SecretError(
                    f"they were encrypted with another key (key id {row.key_id}) than "
                    f"{box.source} (key id {box.key_id}); set BOT_SECRET_KEY to the key they "
                    "were stored with, or connect the org again"
                )
            secret = box.decrypt(row.ciphertext)
        except SecretError as exc:
            log.error("stored Atlas credentials of org %s unusable: %s", row.org_id, exc)
            raise UnreadableCredentials(
                f"The stored Atlas credentials of org {row.org_id} cannot be used: {exc}."
            ) from None
        return atlas_client_with(
            self.settings,
            kind=row.kind,
            public_id=row.public_id,
            secret=secret,
            request_counter=self.metrics.atlas_requests,
        )

    async def aclose(self) -> None:
        await self.atlas.aclose()
        for client in list(self.org_clients.values()):
            await client.aclose()
        self.org_clients.clear()
        self.db.dispose()


class OrgAtlas:
    """``AtlasClient``'s operations for one org, each run with the client ``Deps`` picks for it.

    Every public coroutine method of ``AtlasClient`` (and the ``invoice_csv`` context
    manager) is available under its own name and signature; ``aclose`` is not, since the
    clients belong to ``Deps``.
    """

    def __init__(self, deps: Deps, org_id: str) -> None:
        self._deps = deps
        self.org_id = org_id

    async def client(self) -> AtlasClient:
        return await self._deps.atlas_client(self.org_id)

    def __getattr__(self, name: str) -> Any:
        operation = getattr(AtlasClient, name, None)
        if name.startswith("_") or name == "aclose" or not callable(operation):
            raise AttributeError(f"{type(self).__name__!r} has no operation {name!r}")
        inner = getattr(operation, "__wrapped__", None)
        if inner is not None and inspect.isasyncgenfunction(inner):  # an @asynccontextmanager

            @asynccontextmanager
            @functools.wraps(operation)
            async def entered(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                client = await self.client()
                async with getattr(client, name)(*args, **kwargs) as value:
                    yield value

            return entered
        if not inspect.iscoroutinefunction(operation):
            raise AttributeError(f"{type(self).__name__!r} has no operation {name!r}")

        @functools.wraps(operation)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self.client(), name)(*args, **kwargs)

        return call
