"""A light fixture for handler unit tests: no HTTP server, no Slack, no Atlas.

`light` holds `Deps` over a migrated SQLite file in the test's directory, a Slack client that
records each Web API call and answers ``ok`` without any network, and an Atlas client aimed at
a closed port (a handler that reaches Atlas in such a test is a bug in the test). `invocation()`
builds what a handler gets, its ``respond`` recording the replies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.atlas import AtlasClient
from bot.core.config import Settings
from bot.deps import Deps
from bot.runtime.app import build_deps
from handlers.invocation import Invocation
from storage import Database, links
from tests.fakes import clock


class RecordingSlack(AsyncWebClient):
    """Answers every Web API call ``ok`` (with a ``ts``), keeping (method, arguments)."""

    def __init__(self) -> None:
        super().__init__(token="xoxb-light")
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        self.calls.append((api_method, kwargs.get("json") or kwargs.get("params") or {}))
        data = {"ok": True, "ts": f"1700000000.{len(self.calls):06d}", "view": {"id": "V1"}}
        return AsyncSlackResponse(
            client=self,
            http_verb="POST",
            api_url=api_method,
            req_args={},
            data=data,
            headers={},
            status_code=200,
        )


@dataclass
class Light:
    deps: Deps
    slack: RecordingSlack
    replies: list[dict[str, Any]] = field(default_factory=list)

    def invocation(
        self, *, user_id: str = "U_ADMIN", channel_id: str = "C1", team_id: str = "T1"
    ) -> Invocation:
        async def respond(**body: Any) -> None:
            self.replies.append(body)

        return Invocation(
            deps=self.deps,
            team_id=team_id,
            channel_id=channel_id,
            user_id=user_id,
            respond=respond,  # type: ignore[arg-type]  # Bolt's AsyncRespond, called the same way
        )

    def link(self, org_id: str, *, channel_id: str = "C1", team_id: str = "T1") -> None:
        with self.deps.db.session() as session:
            links.add_link(
                session, team_id=team_id, channel_id=channel_id, org_id=org_id, created_by="U"
            )

    def posted(self) -> list[dict[str, Any]]:
        return [args for method, args in self.slack.calls if method == "chat.postMessage"]


@pytest.fixture
async def light(tmp_path: Path):
    settings = Settings(
        _env_file=None,
        DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}",
        MONGODB_ATLAS_BASE_URL="http://127.0.0.1:9",
        MONGODB_ATLAS_CLIENT_ID="mdb_sa_id_" + "0" * 24,
        MONGODB_ATLAS_CLIENT_SECRET="mdb_sa_sk_" + "0" * 40,
        SLACK_BOT_TOKEN="xoxb-light",
    )
    db = Database(settings.DATABASE_URL)
    db.upgrade()
    atlas = AtlasClient.with_credentials(
        base_url=settings.MONGODB_ATLAS_BASE_URL,
        client_id=settings.MONGODB_ATLAS_CLIENT_ID,
        client_secret=settings.MONGODB_ATLAS_CLIENT_SECRET,
    )
    slack = RecordingSlack()
    deps = build_deps(settings, atlas=atlas, slack=slack, db=db, clock=clock.now)
    yield Light(deps, slack)
    await deps.aclose()
