"""The one dependencies object, built at start-up and handed to handlers and jobs.

Tests build the same object around fakes (the sandbox Atlas, a fake Slack Web
API, a temporary database); nothing here is a module-level global.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.atlas import AtlasClient
from bot.config import Settings
from storage import Database


def utcnow() -> datetime:
    return datetime.now(UTC)


def slack_client(settings: Settings, token: str | None = None) -> AsyncWebClient:
    """The Web API client with slack_sdk's retry handlers (they are off by default)."""
    return AsyncWebClient(
        token=token or settings.SLACK_BOT_TOKEN,
        base_url=settings.SLACK_API_URL,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
        ],
    )


def worker_name() -> str:
    """Who holds a lease: host and process, so a log line says which replica did what."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Deps:
    """Settings, clients, database and clock: everything a handler or job may use."""

    settings: Settings
    atlas: AtlasClient
    db: Database
    slack: AsyncWebClient
    clock: Callable[[], datetime] = utcnow
    worker: str = field(default_factory=worker_name)

    def today(self) -> date:
        return self.clock().date()

    def atlas_for(self, org_id: str) -> AtlasClient:
        """The Atlas client to use for one org (per-org credentials plug in here)."""
        return self.atlas

    async def aclose(self) -> None:
        await self.atlas.aclose()
        self.db.dispose()
