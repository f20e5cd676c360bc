"""The one dependencies object, built at start-up and handed to handlers and jobs.

A plain container: what it holds is built elsewhere (``bot.runtime.app.build_deps``) and does
its work in its own room (the Slack client in ``bot.slack.client``, each org's Atlas client
and the credentials key in ``bot.services.credentials``). Tests build the same object around
fakes (the sandbox Atlas, a fake Slack Web API, a temporary database); nothing here is a
module-level global.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from slack_sdk.web.async_client import AsyncWebClient

from bot.atlas import AtlasClient
from bot.core.config import Settings
from bot.core.singleflight import SingleFlight
from bot.runtime.background import Background
from bot.runtime.metrics import Metrics
from bot.services.credentials import OrgCredentials
from storage import Database


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_name() -> str:
    """Who holds a lease: host and process, so a log line says which replica did what."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Deps:
    """Settings, clients, database and clock: everything a handler or job may use.

    ``atlas`` is the client for the configured credentials; ``credentials`` gives each org
    the client it uses right now (``await deps.credentials.client(org_id)``: its own stored
    credentials when an admin connected some) and the key they are sealed with.
    ``metrics`` is what ``GET /metrics`` shows.
    """

    settings: Settings
    atlas: AtlasClient
    db: Database
    slack: AsyncWebClient
    credentials: OrgCredentials
    clock: Callable[[], datetime] = utcnow
    worker: str = field(default_factory=worker_name)
    metrics: Metrics = field(default_factory=Metrics, repr=False, compare=False)
    # Listeners' work after their acknowledgement (awaited in place in the shell).
    background: Background = field(default_factory=Background, repr=False, compare=False)
    # Month-to-date reads in flight, by org: concurrent `pending`s share one Atlas request.
    pending_reads: SingleFlight = field(default_factory=SingleFlight, repr=False, compare=False)

    def today(self) -> date:
        return self.clock().date()

    async def aclose(self) -> None:
        await self.credentials.aclose()
        await self.atlas.aclose()
        self.db.dispose()
