"""The sandbox runner: a real server on a free loopback port, started and stopped cleanly."""

from __future__ import annotations

import threading
from datetime import date

import httpx
import pytest

from bot.sandbox import SandboxServer, serve_forever


def test_runs_on_a_free_port_and_stops() -> None:
    server = SandboxServer(seed=7, today=date(2025, 6, 10))
    with pytest.raises(RuntimeError):
        server.base_url  # noqa: B018 - not started yet
    with server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.port != 0
        info = httpx.get(server.base_url + "/_sandbox/info").json()
        assert info["seed"] == 7
        assert info["today"] == "2025-06-10"
        assert [o["id"] for o in info["orgs"]] == list(server.data.org_ids)
        with pytest.raises(RuntimeError):
            server.start()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/_sandbox/info")
    server.stop()  # stopping twice is harmless


def test_two_sandboxes_side_by_side_differ_by_seed() -> None:
    with SandboxServer(seed=1) as one, SandboxServer(seed=2) as two:
        assert one.port != two.port
        first = httpx.get(one.base_url + "/_sandbox/info").json()
        second = httpx.get(two.base_url + "/_sandbox/info").json()
    assert first["orgs"][0]["id"] != second["orgs"][0]["id"]
    assert first["credentials"] != second["credentials"]


def test_same_seed_serves_the_same_ids_and_amounts() -> None:
    today = date(2025, 6, 10)
    seen = []
    for _ in range(2):
        with SandboxServer(seed=5, today=today) as server:
            info = httpx.get(server.base_url + "/_sandbox/info").json()
            org = server.data.org(info["orgs"][0]["id"])
            assert org is not None
            seen.append((info["orgs"], info["credentials"], org.closed[0].subtotal_cents))
    assert seen[0] == seen[1]


def test_extra_orgs_are_served() -> None:
    with SandboxServer(seed=1, extra_orgs=500) as server:
        assert len(server.data.org_ids) == 504
        info = httpx.get(server.base_url + "/_sandbox/info").json()
    assert len(info["orgs"]) == 504
    assert info["orgs"][-1]["name"] == "Extra Org 500"


def test_serve_forever_prints_how_to_use_it_and_stops() -> None:
    lines: list[str] = []
    printed = threading.Event()
    stop = threading.Event()

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("# state and faults"):
            printed.set()

    thread = threading.Thread(target=serve_forever, args=(0, 3, echo), kwargs={"stop": stop})
    thread.start()
    try:
        assert printed.wait(timeout=30)
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert set(exports) == {
            "MONGODB_ATLAS_BASE_URL",
            "MONGODB_ATLAS_CLIENT_ID",
            "MONGODB_ATLAS_CLIENT_SECRET",
        }
        assert any("MONGODB_ATLAS_PUBLIC_API_KEY=" in line for line in lines)
        assert any("Acme Production" in line for line in lines)
        info = httpx.get(exports["MONGODB_ATLAS_BASE_URL"] + "/_sandbox/info").json()
        assert info["seed"] == 3
        assert info["credentials"]["client_id"] == exports["MONGODB_ATLAS_CLIENT_ID"]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
