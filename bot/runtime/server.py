"""``billing-bot serve``: the Bolt app on Starlette under uvicorn, or over Socket Mode.

HTTP mode serves ``POST /slack/events`` (commands, actions, events),
``GET /healthz`` and ``GET /metrics`` (Prometheus) from one ASGI app; the
scheduler lives in its lifespan, so it starts and stops with the server. Slack
requests pass ``bot.slack.guard`` (size, signature, payload shape, retries)
before Bolt dispatches them. Socket Mode receives Slack's requests over
slack_bolt's WebSocket client instead, and uvicorn serves only ``GET /healthz``
(which also reports the socket) and ``GET /metrics``, in the same event loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.web.async_client import AsyncWebClient
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

# slack_bolt's default: how often the Socket Mode client pings, and checks its connection.
PING_SECONDS = 10.0


def probe_routes(
    deps: Deps, jobs: Jobs, *, socket: Callable[[], Awaitable[bool]] | None = None
) -> list[Route]:
    """``GET /healthz`` and ``GET /metrics``, for both modes.

    ``socket`` (Socket Mode) says whether the WebSocket to Slack is connected: ``/healthz``
    then reports it as ``"socket"`` and is unhealthy (503) while it is not.
    """

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
        if socket is not None:
            connected = await socket()
            checks["socket"] = "connected" if connected else "disconnected"
            healthy = healthy and connected
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

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def _shutdown(deps: Deps, jobs: Jobs) -> None:
    await jobs.stop()
    await deps.background.drain(timeout=DRAIN_SECONDS)  # commands already acknowledged
    await deps.aclose()


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
            await _shutdown(deps, jobs)

    return Starlette(
        routes=[Route("/slack/events", guard.handle, methods=["POST"]), *probe_routes(deps, jobs)],
        lifespan=lifespan,
    )


class SocketMode:
    """Socket Mode: slack_bolt's WebSocket handler, the jobs, and ``/healthz`` + ``/metrics``
    under uvicorn, in one event loop.

    ``await run()`` serves until ``stop()`` or SIGINT/SIGTERM (uvicorn's handlers): uvicorn
    stops, then its lifespan closes the socket and runs HTTP mode's shutdown (jobs, the
    acknowledged commands' drain, the clients). The socket connects in the background, so
    ``/healthz`` answers (503, ``"socket": "disconnected"``) while it cannot.

    ``web_client`` is the Web API client that opens the socket (``apps.connections.open``);
    by default the app's, on ``SLACK_API_URL``. ``ping_seconds`` is how often the client
    pings Slack and checks its session; a dropped or stale session is replaced then.
    """

    def __init__(
        self,
        deps: Deps,
        app: AsyncApp,
        app_token: str,
        *,
        host: str,
        port: int,
        web_client: AsyncWebClient | None = None,
        ping_seconds: float = PING_SECONDS,
    ) -> None:
        self._deps = deps
        self._app = app
        self._app_token = app_token
        self._web_client = web_client
        self._ping_seconds = ping_seconds
        self.jobs = Jobs(deps)
        self._client: SocketModeClient | None = None
        self._hello_session: object | None = None
        asgi = Starlette(
            routes=probe_routes(deps, self.jobs, socket=self.connected), lifespan=self._lifespan
        )
        # log_config=None: as in HTTP mode, uvicorn's lines go through the process's handler.
        config = uvicorn.Config(asgi, host=host, port=port, http="httptools", log_config=None)
        self.server = uvicorn.Server(config)

    async def run(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        """What SIGINT does: uvicorn stops, then the lifespan's shutdown runs."""
        self.server.should_exit = True

    async def connected(self) -> bool:
        """A session is open, its pings are answered, and Slack said ``hello`` on it."""
        client = self._client
        return (
            client is not None
            and self._hello_session is not None
            and self._hello_session is client.current_session
            and await client.is_connected()
        )

    async def _on_message(
        self, client: AsyncBaseSocketModeClient, message: dict[str, Any], _: str | None
    ) -> None:
        # Slack's first message on every new connection (https://api.slack.com/apis/socket-mode).
        if message.get("type") == "hello" and isinstance(client, SocketModeClient):
            self._hello_session = client.current_session
            log.info("Socket Mode connected (%s)", message.get("num_connections"))

    @asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        gc.freeze()
        self.jobs.start()
        # Built here: slack_sdk's client starts tasks on the running loop when it is created.
        handler = AsyncSocketModeHandler(
            self._app,
            self._app_token,
            web_client=self._web_client,
            ping_interval=self._ping_seconds,
        )
        client = handler.client
        # A dropped socket, a "disconnect" message or a stale session (no pong for four pings)
        # opens a new one (apps.connections.open again): slack_sdk's default, stated here.
        client.default_auto_reconnect_enabled = client.auto_reconnect_enabled = True
        client.message_listeners.append(self._on_message)
        self._client = client
        # connect() retries until it succeeds or the client is closed.
        connecting = asyncio.create_task(handler.connect_async())  # type: ignore[no-untyped-call]
        try:
            yield
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]
            connecting.cancel()
            await _shutdown(self._deps, self.jobs)


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
        log.info("serving Slack Socket Mode, /healthz and /metrics on %s:%s", host, port)
        asyncio.run(SocketMode(deps, app, settings.SLACK_APP_TOKEN, host=host, port=port).run())
        return
    log.info("serving Slack HTTP mode on %s:%s", host, port)
    # log_config=None: uvicorn's loggers keep the process's handler (bot.runtime.logs), so its lines
    # are JSON and redacted like the rest; their level is the root's (BOT_LOG_LEVEL).
    uvicorn.run(build_asgi(deps, app), host=host, port=port, http="httptools", log_config=None)
