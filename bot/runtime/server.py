"""``billing-bot serve``: the Bolt app on Starlette under uvicorn, or over Socket Mode.

HTTP mode serves ``POST /slack/events`` (commands, actions, events),
``GET /healthz`` and ``GET /metrics`` (Prometheus) from one ASGI app; the
scheduler lives in its lifespan, so it starts and stops with the server. Slack
requests pass ``bot.slack.guard`` (size, signature, payload shape, retries)
before Bolt dispatches them. Socket Mode has no HTTP server, so no ``/healthz``
or ``/metrics`` either.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from slack_bolt.async_app import AsyncApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.core.config import ConfigError, Settings
from bot.deps import Deps
from bot.runtime.app import build_app, build_deps
from bot.runtime.jobs import Jobs
from bot.slack.guard import SlackGuard
from storage import StorageError, costs

log = logging.getLogger(__name__)

# How long a stopping server lets acknowledged commands finish their work.
DRAIN_SECONDS = 15.0


def build_asgi(deps: Deps, app: AsyncApp) -> Starlette:
    guard = SlackGuard(app, signing_secret=deps.settings.SLACK_SIGNING_SECRET or "")
    jobs = Jobs(deps)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        gc.freeze()  # start-up objects leave the collector's scans: shorter pauses under load
        jobs.start()
        try:
            yield
        finally:
            await jobs.stop()
            await deps.background.drain(timeout=DRAIN_SECONDS)  # commands already acknowledged
            await deps.aclose()

    async def healthz(_: Request) -> JSONResponse:
        checks = {"scheduler": "running" if jobs.running else "stopped"}
        try:
            await asyncio.to_thread(deps.db.ping)
            checks["database"] = "ok"
        except StorageError as exc:
            # The detail (host, driver error) is for the operators' logs, not for any caller.
            log.warning("healthz: the database is unavailable: %s", exc)
            checks["database"] = "unavailable"
        healthy = checks["database"] == "ok" and jobs.running
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", **checks},
            status_code=200 if healthy else 503,
        )

    async def metrics(request: Request) -> Response:
        # Unsigned, like /healthz: it holds counts and fixed label values, no secret or user text.
        try:
            pending: int | None = await deps.db.run(costs.pending_count)
        except StorageError as exc:
            log.warning("metrics: pending Cost Explorer queries unknown: %s", exc)
            pending = None
        body, content_type = deps.metrics.exposition(
            accept=request.headers.get("accept"), cost_queries_pending=pending
        )
        return Response(body, headers={"Content-Type": content_type})

    return Starlette(
        routes=[
            Route("/slack/events", guard.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            raise ConfigError(f"{name}: must be set to run the Slack app")


def serve(settings: Settings, *, port: int, host: str = "0.0.0.0") -> None:
    """Apply migrations, then run until interrupted."""
    if settings.SLACK_APP_TOKEN:
        require(settings, "SLACK_BOT_TOKEN")
    else:
        require(settings, "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")
    deps = build_deps(settings)
    deps.db.upgrade()
    deps.credentials.box()  # the first start generates the key file (with a warning) if none is set
    app = build_app(deps)
    if settings.SLACK_APP_TOKEN:
        asyncio.run(_socket_mode(deps, app, settings.SLACK_APP_TOKEN))
        return
    log.info("serving Slack HTTP mode on %s:%s", host, port)
    # log_config=None: uvicorn's loggers keep the process's handler (bot.runtime.logs), so its lines
    # are JSON and redacted like the rest; their level is the root's (BOT_LOG_LEVEL).
    uvicorn.run(build_asgi(deps, app), host=host, port=port, http="httptools", log_config=None)


async def _socket_mode(deps: Deps, app: AsyncApp, app_token: str) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    jobs = Jobs(deps)
    jobs.start()
    try:
        # slack_bolt leaves start_async unannotated.
        await AsyncSocketModeHandler(app, app_token).start_async()  # type: ignore[no-untyped-call]
    finally:
        await jobs.stop()
        await deps.background.drain(timeout=DRAIN_SECONDS)
        await deps.aclose()
