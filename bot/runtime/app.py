"""Builds the bot: the dependencies object from settings, and the Bolt app around it.

Nothing here runs at import time; ``bot.cli`` (``serve``, ``shell``, ``jobs``)
calls these and starts what they return.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

import handlers
from bot.atlas import AtlasClient
from bot.core.config import Settings
from bot.deps import Deps
from bot.render.explain import UNEXPECTED
from bot.runtime.metrics import Metrics
from bot.services.credentials import OrgCredentials, atlas_client
from bot.slack.client import slack_client
from storage import Database

log = logging.getLogger(__name__)


def build_deps(
    settings: Settings,
    *,
    atlas: AtlasClient | None = None,
    slack: AsyncWebClient | None = None,
    db: Database | None = None,
    **extra: Any,
) -> Deps:
    """The dependencies object; tests pass their own Atlas, Slack or database.

    The clients built here count into the ``Metrics`` of the result (``metrics=`` in
    ``extra``, else a new one); clients passed in count wherever they were built to.
    """
    metrics = extra.pop("metrics", None) or Metrics()
    atlas = atlas or atlas_client(settings, request_counter=metrics.atlas_requests)
    db = db or Database(settings.DATABASE_URL)
    return Deps(
        settings=settings,
        atlas=atlas,
        db=db,
        slack=slack or slack_client(settings, errors=metrics.slack_errors),
        credentials=OrgCredentials(settings, atlas, db),
        metrics=metrics,
        **extra,
    )


def build_app(deps: Deps) -> AsyncApp:
    """The Bolt app with every listener registered.

    Listeners run inline (``process_before_response=True``): each acknowledges
    Slack, hands its slow work to ``deps.background`` and returns, so the
    acknowledgement is sent at once (see ``bot.runtime.background``).
    """
    app = AsyncApp(
        client=deps.slack,
        signing_secret=deps.settings.SLACK_SIGNING_SECRET or "",
        process_before_response=True,
    )
    handlers.register(app, deps)

    @app.error
    async def on_unexpected(
        error: Exception, body: dict[str, Any], respond: AsyncRespond | None
    ) -> None:
        log.exception("unexpected error handling a Slack request", exc_info=error)
        if respond is not None and body.get("response_url"):
            await respond(
                text=UNEXPECTED,
                response_type="ephemeral",
                replace_original=False,
            )

    return app
