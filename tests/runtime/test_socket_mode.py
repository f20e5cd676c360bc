"""``serve`` in Socket Mode against a loopback Socket Mode server (``tests.fakes.socket_mode``).

The bot runs as ``serve`` runs it (``bot.runtime.server.SocketMode``: slack_bolt's handler, the
jobs, uvicorn with ``/healthz`` and ``/metrics``) on the test's event loop, over real loopback
sockets: the fake's ``apps.connections.open`` and WebSocket, the fake Slack Web API for
everything else, the sandbox Atlas and a migrated database.
Protocol: https://api.slack.com/apis/socket-mode and
https://api.slack.com/methods/apps.connections.open.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.runtime.app import build_app, build_deps
from bot.runtime.server import SocketMode
from tests.app.conftest import bot_settings
from tests.app.test_restart import _env
from tests.fakes import clock
from tests.fakes.slack import SlackDriver
from tests.fakes.socket_mode import APP_TOKEN, FakeSocketMode

# Short pings so that a dropped connection is noticed in about a second (slack_bolt's default
# is 10 s); the reconnect path is slack_sdk's own either way.
PING_SECONDS = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Running:
    slack: FakeSocketMode
    server: SocketMode
    url: str
    http: httpx.AsyncClient
    driver: SlackDriver  # builds the slash command's fields as Slack sends them

    async def health(self) -> httpx.Response:
        return await self.http.get(self.url + "/healthz")

    async def until_health(self, status: int, socket_state: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            response = await self.health()
            body = response.json()
            if response.status_code == status and body.get("socket") == socket_state:
                return body
            if time.monotonic() > deadline:
                pytest.fail(f"/healthz still {response.status_code} {body} after {timeout}s")
            await asyncio.sleep(0.02)


@pytest.fixture
def db_url(sqlite_url) -> str:
    """SQLite only: the database is not what these tests are about."""
    return sqlite_url


@pytest.fixture
async def running(sandbox, fake_slack, db) -> AsyncIterator[Running]:
    settings = bot_settings(
        sandbox,
        fake_slack,
        db.engine.url.render_as_string(hide_password=False),
        SLACK_APP_TOKEN=APP_TOKEN,
    )
    deps = build_deps(settings, db=db, clock=clock.now)
    port = _free_port()
    async with FakeSocketMode() as slack, httpx.AsyncClient(timeout=5) as http:
        server = SocketMode(
            deps,
            build_app(deps),
            APP_TOKEN,
            host="127.0.0.1",
            port=port,
            web_client=AsyncWebClient(base_url=slack.api_url),
            ping_seconds=PING_SECONDS,
        )
        task = asyncio.create_task(server.run())
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            assert not task.done(), task.exception() if task.done() else None
            try:
                await http.get(url + "/healthz")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("serve did not answer /healthz")
                await asyncio.sleep(0.05)
        driver = SlackDriver(url, "unused: Socket Mode requests are not signed", fake=fake_slack)
        yield Running(slack, server, url, http, driver)
        server.stop()  # what SIGINT does (uvicorn's handler sets should_exit)
        await asyncio.wait_for(task, 30)
        # The stop closed the socket before the shutdown: no connection is left open.
        assert slack.live() == []
        assert server.jobs.running is False
        assert slack.violations == []


async def test_healthz_says_connected_after_hello(running):
    await running.slack.connected()
    body = await running.until_health(200, "connected")
    assert body == {"status": "ok", "scheduler": "running", "database": "ok", "socket": "connected"}
    assert running.slack.opens == [APP_TOKEN]  # one apps.connections.open, with the xapp token


async def test_a_slash_command_envelope_is_acknowledged_with_its_answer(running):
    await running.slack.connected()
    await running.until_health(200, "connected")
    started = time.monotonic()
    ack = await running.slack.command(running.driver.command_body("help"))
    assert time.monotonic() - started < 3.0  # also enforced by the fake
    # Bolt's ack(text=...) goes into the envelope's ack as its payload.
    assert set(ack) == {"envelope_id", "payload"}
    assert "/atlas-billing pending [ORG_ID]" in ack["payload"]["text"]
    assert "costs START END" in ack["payload"]["text"]


async def test_a_dropped_connection_reconnects_and_commands_are_acknowledged_again(running):
    slack = running.slack
    await slack.connected()
    await running.until_health(200, "connected")
    ack = await slack.command(running.driver.command_body("help"))
    assert "/atlas-billing" in ack["payload"]["text"]

    slack.drop()  # TCP gone, no close frame
    # Until the client notices (its next ping check) the socket is reported down.
    down = await running.until_health(503, "disconnected")
    assert down["status"] == "degraded"
    await slack.connected(count=2)
    await running.until_health(200, "connected")
    assert slack.opens == [APP_TOKEN, APP_TOKEN]  # a new URL for the new connection

    ack = await slack.command(running.driver.command_body("help"))
    assert "costs START END" in ack["payload"]["text"]


async def test_a_disconnect_message_moves_to_a_new_connection(running):
    slack = running.slack
    first = await slack.connected()
    await running.until_health(200, "connected")
    await slack.disconnect("refresh_requested")
    await slack.connected(count=2)
    await slack.wait_for(lambda: not first.open, 10, "the old connection to be closed")
    await running.until_health(200, "connected")
    ack = await slack.command(running.driver.command_body("help"))
    assert "costs START END" in ack["payload"]["text"]


async def test_healthz_is_503_while_slack_cannot_be_reached(running):
    slack = running.slack
    await slack.connected()
    slack.app_token = "xapp-1-A_FAKE-2-revoked"  # the next apps.connections.open: invalid_auth
    slack.drop()
    await running.until_health(503, "disconnected")
    await slack.wait_for(lambda: len(slack.opens) >= 2, 10, "a reconnect attempt")
    assert len(slack.connections) == 1
    assert (await running.health()).status_code == 503
    slack.app_token = APP_TOKEN  # Slack answers again: the client's retry gets through
    await slack.connected(count=2, timeout=15)
    await running.until_health(200, "connected")


async def test_metrics_answers_in_socket_mode(running):
    response = await running.http.get(running.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "billing_bot_cost_queries_pending 0.0" in response.text
    # Socket Mode serves no /slack/events: Slack's requests arrive over the socket.
    assert (await running.http.post(running.url + "/slack/events")).status_code == 404


async def test_sigint_stops_the_socket_and_http_then_shuts_down(sandbox, fake_slack, db, tmp_path):
    """The real command in a process of its own: SIGINT closes the socket (a close frame, not a
    dropped connection) and the HTTP server, and the process exits as HTTP mode's does (130)."""
    async with FakeSocketMode() as slack, httpx.AsyncClient(timeout=2) as http:
        env = _env(sandbox, fake_slack, db)
        # apps.connections.open is the app's own Web API client's, on SLACK_API_URL.
        env.update(SLACK_APP_TOKEN=APP_TOKEN, SLACK_API_URL=slack.api_url)
        del env["SLACK_SIGNING_SECRET"]  # Socket Mode needs none
        port = _free_port()
        log = (tmp_path / "serve.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.as_of", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            conn = await slack.connected(timeout=30)
            url = f"http://127.0.0.1:{port}/healthz"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    response = await http.get(url)
                    if response.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("serve's /healthz never said connected")
                await asyncio.sleep(0.05)
            assert response.json()["socket"] == "connected"

            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 30
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail("serve did not stop on SIGINT")
                await asyncio.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()
        output = (tmp_path / "serve.log").read_text()
        assert proc.returncode == 130, output
        await slack.wait_for(lambda: not conn.open, 5, "the socket to be closed")
        assert conn.ws.close_code == 1000  # the client said goodbye; the TCP was not just cut
        assert len(slack.connections) == 1  # and did not reconnect on its way out
        assert "Traceback" not in output
        with pytest.raises(httpx.TransportError):
            await http.get(url)
        assert slack.violations == []
