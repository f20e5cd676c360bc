"""A loopback Slack Socket Mode server: ``apps.connections.open`` and the WebSocket behind it.

Strict like Slack, each rule with its source next to it:

* ``POST /api/apps.connections.open`` (https://api.slack.com/methods/apps.connections.open)
  takes an app-level token (``xapp-…``) only, as ``Authorization: Bearer``: none is
  ``not_authed``, a bot or user token ``not_allowed_token_type``, another app-level token
  ``invalid_auth``. It answers ``{"ok": true, "url": "ws://127.0.0.1:PORT/link/?ticket=…"}``.
* The URL's ticket is good for one connection (the fake's reading of "Call this method to
  get a new WebSocket URL" for each connection, https://api.slack.com/apis/socket-mode):
  an unknown or used ticket is refused (401) before the upgrade.
* On connect the server sends ``{"type": "hello", "num_connections": N, "debug_info": …,
  "connection_info": {"app_id": …}}`` (https://api.slack.com/apis/socket-mode, "Connecting").
* It delivers requests as envelopes ``{"envelope_id", "type", "payload",
  "accepts_response_payload"}``; a slash command's payload has the HTTP form's fields
  (https://api.slack.com/apis/socket-mode, "Handling events" and "Acknowledge events").
* The app acknowledges with ``{"envelope_id": …}``, optionally with ``payload`` (the same body
  an HTTP response would carry), within 3 seconds; an ack that is not JSON, names an envelope
  not sent on that connection or not pending, or carries other keys, is recorded in
  ``violations`` (every test's fixture asserts there are none).
* It can ask the app to reconnect, ``{"type": "disconnect", "reason": "refresh_requested"}``
  (https://api.slack.com/apis/socket-mode, "Disconnect events"), or drop the TCP connection
  without a close frame.

Runs on the test's event loop (aiohttp's server), on real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

APP_TOKEN = "xapp-1-A_FAKE-1-fake"
APP_ID = "A_FAKE"
ACK_SECONDS = 3.0  # https://api.slack.com/apis/socket-mode: acknowledge within 3 seconds


@dataclass
class Connection:
    ws: web.WebSocketResponse
    request: web.Request
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    opened: float = field(default_factory=time.monotonic)

    @property
    def open(self) -> bool:
        return not self.ws.closed and self.request.transport is not None


class FakeSocketMode:
    """``async with FakeSocketMode() as slack: slack.api_url``; see the module's rules."""

    def __init__(self, app_token: str = APP_TOKEN) -> None:
        self.app_token = app_token
        self.opens: list[str] = []  # the token of each apps.connections.open call, in order
        self.connections: list[Connection] = []
        self.violations: list[str] = []
        self._tickets: set[str] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- the server

    async def __aenter__(self) -> FakeSocketMode:
        app = web.Application()
        app.router.add_post("/api/apps.connections.open", self._open)
        app.router.add_get("/link/", self._link)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        for conn in self.connections:
            if conn.open:
                await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        """The Web API base URL (slack_sdk's ``base_url``) that serves apps.connections.open."""
        return f"http://127.0.0.1:{self.port}/api/"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _open(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if not token:
            # a token in the form body is also accepted by Slack; slack_sdk sends the header
            form = await request.post()
            token = str(form.get("token", ""))
        self.opens.append(token)
        self._notify()
        if not token:
            return web.json_response({"ok": False, "error": "not_authed"})
        if not token.startswith("xapp-"):
            return web.json_response({"ok": False, "error": "not_allowed_token_type"})
        if token != self.app_token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        ticket = secrets.token_hex(16)
        self._tickets.add(ticket)
        url = f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={APP_ID}"
        return web.json_response({"ok": True, "url": url})

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            self.violations.append(f"connection with an unknown or used ticket {ticket!r}")
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse()  # answers the client's pings (autoping)
        await ws.prepare(request)
        conn = Connection(ws, request)
        self.connections.append(conn)
        live = sum(1 for c in self.connections if c.open)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": live,
                "debug_info": {
                    "host": "applink-fake",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": APP_ID},
            }
        )
        self._notify()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._ack(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.violations.append("a binary frame (Socket Mode speaks JSON text)")
        finally:
            for future in conn.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the connection closed before the ack"))
            self._notify()
        return ws

    def _ack(self, conn: Connection, data: str) -> None:
        try:
            ack = json.loads(data)
        except ValueError:
            self.violations.append(f"a frame that is not JSON: {data[:80]!r}")
            return
        if not isinstance(ack, dict) or not isinstance(ack.get("envelope_id"), str):
            self.violations.append(f"a message without an envelope_id: {data[:80]!r}")
            return
        if set(ack) - {"envelope_id", "payload"}:
            self.violations.append(
                f"an ack with other keys than envelope_id, payload: {data[:80]!r}"
            )
        if "payload" in ack and not isinstance(ack["payload"], dict):
            self.violations.append(f"an ack whose payload is not an object: {data[:80]!r}")
        future = conn.pending.pop(ack["envelope_id"], None)
        if future is None or future.done():
            self.violations.append(
                f"an ack for no pending envelope on its connection: {data[:80]!r}"
            )
            return
        future.set_result(ack)

    # ---- what tests drive

    def live(self) -> list[Connection]:
        return [c for c in self.connections if c.open]

    async def wait_for(self, condition: Any, timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds (checked at each open, connection or close)."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, 0.2))

    async def connected(self, count: int = 1, timeout: float = 10.0) -> Connection:
        """The newest open connection, once ``count`` connections in all have been made."""
        await self.wait_for(
            lambda: len(self.connections) >= count and self.live(), timeout, f"connection {count}"
        )
        return self.live()[-1]

    async def deliver(
        self, type_: str, payload: dict[str, Any], *, timeout: float = ACK_SECONDS
    ) -> dict[str, Any]:
        """Send an envelope on the newest connection; the ack, or AssertionError after 3 s."""
        live = self.live()
        if not live:
            raise AssertionError("no open Socket Mode connection to deliver on")
        conn = live[-1]
        envelope_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.pending[envelope_id] = future
        await conn.ws.send_json(
            {
                "envelope_id": envelope_id,
                "type": type_,
                "payload": payload,
                "accepts_response_payload": True,
            }
        )
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            conn.pending.pop(envelope_id, None)
            raise AssertionError(f"envelope {type_} not acknowledged within {timeout}s") from None

    async def command(self, form: dict[str, str]) -> dict[str, Any]:
        """A slash command (the fields of the HTTP form) as a ``slash_commands`` envelope."""
        return await self.deliver("slash_commands", form)

    async def disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's ``disconnect`` message on the newest connection (it closes it later)."""
        conn = self.live()[-1]
        await conn.ws.send_json(
            {
                "type": "disconnect",
                "reason": reason,
                "debug_info": {"host": "applink-fake"},
            }
        )

    def drop(self) -> None:
        """Drop the newest connection's TCP connection: no close frame, no goodbye."""
        conn = self.live()[-1]
        transport = conn.request.transport
        assert transport is not None
        transport.abort()
