"""The ASGI app of ``serve``: health, the scheduler in its lifespan, and the events route."""

from __future__ import annotations

import httpx

from bot.runtime.app import build_app, build_deps
from bot.runtime.localserver import LocalServer
from bot.runtime.server import build_asgi
from storage import Database
from tests.app.conftest import bot_settings
from tests.fakes.clock import now


def _serve(sandbox, fake_slack, database: Database) -> LocalServer:
    settings = bot_settings(
        sandbox, fake_slack, database.engine.url.render_as_string(hide_password=False)
    )
    deps = build_deps(settings, db=database, clock=now)
    return LocalServer(build_asgi(deps, build_app(deps)), lifespan="on")


def test_healthz_reports_database_and_scheduler(sandbox, fake_slack, db):
    with _serve(sandbox, fake_slack, db) as server:
        response = httpx.get(server.url + "/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "scheduler": "running", "database": "ok"}
        assert httpx.get(server.url + "/slack/events").status_code == 405
        assert httpx.post(server.url + "/slack/events", content=b"{}").status_code == 401


def test_healthz_is_503_when_the_database_is_gone(sandbox, fake_slack, tmp_path):
    database = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    with _serve(sandbox, fake_slack, database) as server:
        response = httpx.get(server.url + "/healthz", timeout=15)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "degraded" and body["database"].startswith("unavailable")
