"""A restart while a Cost Explorer query is pending loses nothing and posts the result once.

Real processes: ``billing-bot serve`` is started, killed with SIGKILL mid-polling and
started again, against the sandbox Atlas, the fake Slack and a real database.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import storage.costs
from bot.sandbox import Fault
from storage import links
from storage.models import CostQuery
from tests.app.conftest import CHANNEL, SECRET, TEAM
from tests.fakes.clock import month, today
from tests.fakes.slack import SlackDriver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# The project's root, so `python -m tests.fakes.as_of` imports from a process started elsewhere.
ROOT = str(Path(__file__).resolve().parents[2])


class ServeProcess:
    """``billing-bot serve`` in a process of its own, on the tests' clock (``tests.fakes.as_of``)."""

    def __init__(self, env: dict[str, str], port: int, tmp_path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = (tmp_path / f"serve-{port}-{time.monotonic_ns()}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.as_of", "serve", "--port", str(port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        _wait(self._healthy, 30, "serve to answer /healthz")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"serve exited with {self.proc.returncode}; see {self.log.name}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def job_runs(self, job: str) -> float:
        """How many ticks of `job` this process has finished (its /metrics)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        prefix = f'billing_bot_job_runs_total{{job="{job}"}} '
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), prefix + "0")
        return float(line.removeprefix(prefix))

    def ticks(self, n: int, *jobs: str) -> None:
        """Wait until each of `jobs` has run `n` more ticks here: a bounded stretch in which
        something that should not happen had every chance to (instead of sleeping on it)."""
        start = {job: self.job_runs(job) for job in jobs}
        for job in jobs:
            _wait(lambda job=job: self.job_runs(job) >= start[job] + n, 30, f"{n} more {job} ticks")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _env(sandbox, fake, db) -> dict[str, str]:
    creds = sandbox.data.credentials
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_ATLAS", "SLACK_", "BOT_"))
    }
    env.update(
        MONGODB_ATLAS_BASE_URL=sandbox.base_url,
        MONGODB_ATLAS_CLIENT_ID=creds.client_id,
        MONGODB_ATLAS_CLIENT_SECRET=creds.client_secret,
        SLACK_API_URL=fake.base_url,
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET=SECRET,
        DATABASE_URL=db.engine.url.render_as_string(hide_password=False),
        BOT_POLL_SECONDS="0.2",
        PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
        TEST_TODAY=today().isoformat(),  # the running test's day, for tests.fakes.as_of
    )
    return env


def _query(db) -> CostQuery:
    with db.session() as session:
        return session.get(CostQuery, 1) or pytest.fail("no stored query")


def test_a_killed_server_loses_no_query_and_posts_the_result_once(
    sandbox, fake_slack, db, tmp_path
):
    org = sandbox.data.org_ids[0]
    with db.session() as session:
        links.add_link(session, team_id=TEAM, channel_id=CHANNEL, org_id=org, created_by="U_ADMIN")
    sandbox.state.cost_polls_before_ready = 1_000_000  # Atlas keeps answering 102
    env = _env(sandbox, fake_slack, db)

    first = ServeProcess(env, _free_port(), tmp_path)
    try:
        driver = SlackDriver(first.url, SECRET, fake=fake_slack)
        assert driver.command_sync(f"costs {month(-4)} {month(-1)}").status_code == 200
        started = _wait(lambda: fake_slack.calls_to("chat.postMessage"), 10, "the started message")
        polls = lambda: sandbox.state.requests_for("getCostExplorerUsage")  # noqa: E731
        _wait(lambda: len(polls()) >= 3, 15, "three polls")
    finally:
        first.kill()

    with db.session() as session:
        assert storage.costs.pending_count(session) == 1  # the query survived the kill
    sandbox.state.cost_polls_before_ready = 0  # Atlas has the result now

    second = ServeProcess(env, _free_port(), tmp_path)
    try:
        updates = _wait(lambda: fake_slack.calls_to("chat.update"), 60, "the result")
        _wait(lambda: _query(db).status == "done", 10, "the query to be recorded done")
        polls_at_done = len(polls())
        second.ticks(5, "poll")  # five more poll ticks: nothing may happen in them
        assert len(polls()) == polls_at_done
    finally:
        second.stop()

    assert len(fake_slack.calls_to("chat.update")) == 1
    started_ts = next(iter(fake_slack.messages(CHANNEL)))
    assert started and updates[0]["ts"] == started_ts  # updated in place
    assert len(fake_slack.calls_to("chat.postMessage")) == 1  # only the started message
    assert "Total" in str(updates[0]["blocks"])


def test_serve_refuses_to_start_without_a_signing_secret(sandbox, fake_slack, db, tmp_path):
    env = _env(sandbox, fake_slack, db)
    del env["SLACK_SIGNING_SECRET"]
    result = subprocess.run(
        [sys.executable, "-m", "bot", "serve", "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: SLACK_SIGNING_SECRET: must be set to run the Slack app"


def test_a_stopped_atlas_fault_does_not_stop_polling(sandbox, fake_slack, db, tmp_path):
    """A 500 during a poll is retried at the next tick, not reported as a failure."""
    org = sandbox.data.org_ids[0]
    with db.session() as session:
        links.add_link(session, team_id=TEAM, channel_id=CHANNEL, org_id=org, created_by="U_ADMIN")
    sandbox.state.cost_polls_before_ready = 0
    sandbox.state.add_fault(
        Fault(kind="status", status=500, operation="getCostExplorerUsage", times=4)
    )
    server = ServeProcess(_env(sandbox, fake_slack, db), _free_port(), tmp_path)
    try:
        SlackDriver(server.url, SECRET, fake=fake_slack).command_sync(
            f"costs {month(-4)} {month(-1)}"
        )
        updates = _wait(lambda: fake_slack.calls_to("chat.update"), 60, "the result")
    finally:
        server.stop()
    assert "Total" in str(updates[0]["blocks"])
    assert _query(db).status == "done"


def test_a_stop_lets_an_acknowledged_command_finish_its_work(sandbox, fake_slack, db, tmp_path):
    """SIGINT (a deploy) after Slack got its acknowledgement but before the answer was posted:
    the server finishes the command's work before it exits, so the answer is not lost."""
    [org_id] = sandbox.data.org_ids[:1]
    with db.session() as session:
        links.add_link(
            session, team_id=TEAM, channel_id=CHANNEL, org_id=org_id, created_by="U_ADMIN"
        )
    server = ServeProcess(_env(sandbox, fake_slack, db), _free_port(), tmp_path)
    try:
        # Atlas takes 2 s over the month-to-date spend: the stop lands in the middle.
        sandbox.state.add_fault(Fault(kind="latency", seconds=2.0, operation="listInvoicePending"))
        driver = SlackDriver(server.url, SECRET, fake=fake_slack)
        ack = driver.command_sync("pending")
        assert ack.status_code == 200 and not ack.content  # acknowledged, the work goes on
        _wait(
            lambda: (
                any(r.operation == "listInvoicePending" for r in sandbox.state.requests)
                or sandbox.state.faults == []
            ),
            10,
            "the pending-invoice request to reach Atlas",
        )
        assert fake_slack.calls_to("chat.postMessage") == []
    finally:
        server.stop()  # SIGINT, then up to 15 s to exit
    assert server.proc.returncode == 0
    [posted] = fake_slack.calls_to("chat.postMessage")
    assert posted["channel"] == CHANNEL and "blocks" in posted
    with open(server.log.name) as log:
        assert "Traceback" not in log.read()
