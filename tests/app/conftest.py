"""A running bot for end-to-end tests: the real ASGI app on loopback HTTP, the sandbox Atlas,
the fake Slack Web API and a migrated database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from bot.atlas import AtlasClient
from bot.core.config import Settings
from bot.deps import Deps
from bot.runtime.app import build_app, build_deps
from bot.runtime.localserver import LocalServer
from bot.runtime.server import build_asgi
from bot.sandbox import SandboxServer
from bot.slack.client import slack_client
from storage import Database, links
from tests.fakes import clock
from tests.fakes.slack import FakeSlack, SlackDriver

SECRET = "test-signing-secret"
TEAM = "T1"
CHANNEL = "C_LINKED"
OTHER_CHANNEL = "C_OTHER"


def bot_settings(sandbox: SandboxServer, fake: FakeSlack, database_url: str, **extra) -> Settings:
    creds = sandbox.data.credentials
    values = {
        "MONGODB_ATLAS_BASE_URL": sandbox.base_url,
        "MONGODB_ATLAS_CLIENT_ID": creds.client_id,
        "MONGODB_ATLAS_CLIENT_SECRET": creds.client_secret,
        "SLACK_API_URL": fake.base_url,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SECRET,
        "DATABASE_URL": database_url,
        "BOT_POLL_SECONDS": 1,
        "BOT_ADMINS": "",
        **extra,
    }
    return Settings(_env_file=None, **values)


@dataclass
class Bot:
    """The bot under test plus the handles a test needs to drive and observe it."""

    deps: Deps
    db: Database
    settings: Settings
    fake: FakeSlack
    sandbox: SandboxServer
    driver: SlackDriver
    url: str

    async def command(self, text: str, **options) -> httpx.Response:
        return await self.driver.command(text, **options)

    def link(self, org_id: str, channel: str = CHANNEL, team: str = TEAM) -> None:
        with self.db.session() as session:
            links.add_link(
                session, team_id=team, channel_id=channel, org_id=org_id, created_by="U_ADMIN"
            )

    def replica(self) -> Deps:
        """Another worker on the test's own event loop (same database), as a second replica."""
        creds = self.sandbox.data.credentials
        atlas = AtlasClient.with_credentials(
            base_url=self.sandbox.base_url,
            client_id=creds.client_id,
            client_secret=creds.client_secret,
        )
        return build_deps(
            self.settings,
            atlas=atlas,
            slack=slack_client(self.settings),
            db=self.db,
            clock=self.deps.clock,
            worker=f"test-replica-{id(atlas)}",
        )

    def atlas_requests(self) -> list:
        return [r for r in self.sandbox.state.requests if r.path.startswith("/api/atlas/v2/")]


@pytest.fixture
async def bot(sandbox: SandboxServer, fake_slack: FakeSlack, db: Database) -> AsyncIterator[Bot]:
    settings = bot_settings(
        sandbox, fake_slack, db.engine.url.render_as_string(hide_password=False)
    )
    deps = build_deps(settings, db=db, clock=clock.now)
    app = build_app(deps)
    server = LocalServer(build_asgi(deps, app)).start()
    async with httpx.AsyncClient(timeout=10) as http:
        driver = SlackDriver(server.url, SECRET, fake=fake_slack, client=http)
        yield Bot(deps, db, settings, fake_slack, sandbox, driver, server.url)
    server.stop()
