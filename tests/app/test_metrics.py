"""``GET /metrics`` end to end: real commands and jobs against the running app, then a scrape
over HTTP parsed with Prometheus's own parser."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.atlas import Operation
from bot.deps import Deps
from bot.runtime.app import build_deps
from bot.services import alerts, costs
from bot.slack import outbox
from handlers.subcommands import NAMES
from tests.fakes.clock import Clock

# The alert counted needs month-to-date spend to cross: the 15th of TODAY's month has some.
pytestmark = pytest.mark.as_of(day=15)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The user text sent below; none of it may become a label value.
FOREIGN = "frobnicate"
TRAVERSAL = "../../etc/passwd"
LONG = "x" * 2500
# Label values the bot may use: sub-command names and outcomes, Atlas operations and statuses,
# Slack methods and errors.
OUTCOMES = {"ok", "usage_error", "refused", "failed"}
OPERATIONS = {op.value for op in Operation} | {"token", "revoke"}
SANDBOX_OPERATION = {"oauthToken": "token", "oauthRevoke": "revoke"}


@pytest.fixture
def org(sandbox):
    return sandbox.data.org(sandbox.data.org_ids[0])


async def scrape(bot) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(bot.url + "/metrics")  # no Slack signature needed
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def series(samples: Samples, name: str) -> dict[tuple[str, ...], float]:
    """``{label values: value}`` of one sample name (label values in label-name order)."""
    return {
        tuple(value for _, value in labels): value
        for (sample, labels), value in samples.items()
        if sample == name
    }


async def until(bot, condition, timeout: float = 10) -> Samples:
    """Scrape until ``condition(samples)`` holds: a command is counted once its work is done."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await scrape(bot)
        if condition(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"metrics never met the condition: {series(samples, COMMANDS)}")
        await asyncio.sleep(0.05)


COMMANDS = "billing_bot_commands_total"


def counted(n: int):
    return lambda samples: sum(series(samples, COMMANDS).values()) == n


def job_worker(bot) -> tuple[Deps, Clock]:
    """Another worker on the test's event loop (the app's clients belong to the server's loop)
    counting into the app's metrics, as the scheduler inside ``serve`` does."""
    deps = build_deps(
        bot.settings,
        db=bot.db,
        metrics=bot.deps.metrics,
        clock=bot.deps.clock,
        worker="test-metrics",
    )
    clock = Clock(deps.clock())
    return dataclasses.replace(deps, clock=clock), clock


async def test_metrics_count_commands_atlas_slack_alerts_and_digests(bot, org):
    bot.link(org.id)
    n = 0

    async def command(text: str, **options) -> Samples:
        nonlocal n
        n += 1
        response = await bot.command(text, **options)
        assert response.status_code == 200, response.text
        return await until(bot, counted(n))

    await command("pending")  # ok
    await command("help")  # ok, answered in the acknowledgement
    for text in (f"{FOREIGN} now", "pending a b", f"link {TRAVERSAL}", LONG):
        await command(text)  # usage errors
    await command("threshold 10", user_id="U_MEMBER")  # refused: not an admin
    await command("link " + "0" * 24)  # Atlas answers 404
    bot.fake.fail_next("chat.postMessage")  # Slack answers ok=false, error fatal_error
    await command("pending")  # failed
    bot.fake.fail_next("upload", status=500)  # the file upload step of files_upload_v2
    await command(f"invoice {org.latest_closed.id}")  # failed
    await command("threshold 10")  # ok
    samples = await command("digest now")  # ok: a Cost Explorer query is now pending
    assert series(samples, "billing_bot_cost_queries_pending") == {(): 1.0}

    worker, clock = job_worker(bot)
    try:
        await alerts.check_thresholds(worker)
        await outbox.deliver_due(worker)
        for _ in range(6):  # the digest: poll the query, then post it with its chart
            await costs.poll_due(worker)
            await outbox.deliver_due(worker)
            clock.advance(minutes=1)
    finally:
        await worker.atlas.aclose()
    samples = await scrape(bot)

    assert series(samples, COMMANDS) == {
        ("ok", "pending"): 1,
        ("ok", "help"): 1,
        ("usage_error", "unknown"): 2,
        ("usage_error", "pending"): 1,
        ("usage_error", "link"): 1,
        ("refused", "threshold"): 1,
        ("failed", "link"): 1,
        ("failed", "pending"): 1,
        ("failed", "invoice"): 1,
        ("ok", "threshold"): 1,
        ("ok", "digest"): 1,
    }
    assert series(samples, "billing_bot_alerts_posted_total") == {(): 1}
    assert series(samples, "billing_bot_digests_posted_total") == {(): 1}
    assert series(samples, "billing_bot_cost_queries_pending") == {(): 0}
    assert series(samples, "billing_bot_slack_errors_total") == {
        ("fatal_error", "chat.postMessage"): 1,
        ("http_5xx", "files.upload"): 1,
    }

    # Every Atlas request the sandbox received, retries and tokens included, counted once.
    atlas = series(samples, "billing_bot_atlas_requests_total")
    received = Counter(
        (SANDBOX_OPERATION.get(r.operation, r.operation), str(r.status))
        for r in bot.sandbox.state.requests
    )
    assert atlas == {(op, status): n for (op, status), n in received.items()}
    assert atlas[("listInvoicePending", "404")] == 1
    assert atlas[("token", "200")] >= 1

    # Bounded labels: only known names, never what the user typed.
    allowed = set(NAMES) | {"unknown"} | OUTCOMES | OPERATIONS
    for (name, labels), _ in samples.items():
        for label, value in labels:
            assert FOREIGN not in value and "passwd" not in value and "xxxx" not in value
            if name == COMMANDS or label == "operation":
                assert value in allowed, (name, label, value)


async def test_metrics_need_no_signature_and_start_from_zero(bot):
    samples = await scrape(bot)
    assert series(samples, COMMANDS) == {}
    assert series(samples, "billing_bot_alerts_posted_total") == {(): 0}
    assert series(samples, "billing_bot_digests_posted_total") == {(): 0}
    assert series(samples, "billing_bot_cost_queries_pending") == {(): 0}
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.post(bot.url + "/metrics")).status_code == 405
