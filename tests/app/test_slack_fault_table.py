"""Every cell of docs/SLACK-FAULTS.md, driven end to end: the running bot, the fake Slack Web API
(tests/fakes/slack.py), the sandbox Atlas and a real database.

``TABLE`` below is the one source of the expected outcomes: each (fault, call site) cell is
run against the bot and checked by what can be seen from outside (the fake channel, the
ephemeral answer, the outbox / cost_query / channel_link / audit rows, the log), and
``test_the_doc_lists_the_same_cells`` parses the Markdown table so the doc and this file
cannot drift apart. The two upload sites run each fault at every step of
``files_upload_v2`` it can come at (files.getUploadURLExternal, the upload POST,
files.completeUploadExternal).

Time: slack_sdk's rate-limit handler sleeps ``Retry-After`` (plus up to a second) before
each retry; ``sdk_waits`` records those waits and skips them, so a cell can check that
Retry-After was honoured without waiting it. The jobs run on a replica whose clock the
cells move past stored retry times. The bot is ``tests/app/conftest.py``'s, but started
once per engine for this module and emptied between cells (database rows, the fake's
state): starting and stopping uvicorn for each of the ~60 cells cost more than the cells.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TypedDict

import pytest
from slack_sdk.http_retry import builtin_async_handlers
from sqlalchemy import delete
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel, select

from bot.core.retry_after import MAX_RETRY_AFTER
from bot.runtime.app import build_app, build_deps
from bot.runtime.localserver import LocalServer
from bot.runtime.server import build_asgi
from bot.services import costs
from bot.services.alerts import check_thresholds
from bot.slack.outbox import LEASE_SECONDS, MAX_ATTEMPTS, backoff, deliver_due
from storage import Database, audit, links, outbox, thresholds
from storage.db import make_engine, upgrade
from storage.models import Alert, ChannelLink, CostQuery, OutboxMessage
from tests.app.conftest import CHANNEL, SECRET, TEAM, Bot, bot_settings
from tests.app.helpers import replica_with_clock
from tests.conftest import postgres_base_url
from tests.doc_tables import fault_table
from tests.fakes.clock import day_of, month, now
from tests.fakes.slack import UPLOAD, FakeSlack, SlackDriver, block_action

DOC = Path(__file__).resolve().parents[2] / "docs" / "SLACK-FAULTS.md"

# The cells are about Slack, not dates; they run on the 15th of TODAY's month, so there is
# month-to-date usage for an alert to cross.
USAGE_DAY = 15
pytestmark = pytest.mark.as_of(day=USAGE_DAY)

RETRY_AFTER = 3  # seconds, in every 429 the fake sends (at most MAX_INLINE_RETRY_AFTER)
SDK_ATTEMPTS = 4  # slack_sdk's AsyncRateLimitErrorRetryHandler(max_retry_count=3): 1 + 3
COSTS = f"costs {month(-4)} {month(-1)}"

# The call sites (columns), in the bot's own words.
ANSWER = "command answer"  # handlers/invocation.py `post`: chat.postMessage
INVOICE = "invoice CSV"  # handlers/spend.py `invoice`: files_upload_v2 with a channel
STARTED = "costs started"  # bot/services/costs.py `start`: chat.postMessage
RESULT = "costs result"  # bot/services/costs.py `_finish`: chat.update, by the poll job
POST = "outbox post"  # bot/slack/outbox.py `_deliver`: chat.postMessage
CHART = "digest chart"  # bot/slack/outbox.py `_share_chart`: files_upload_v2 in the thread
BUTTON = "alert button"  # handlers/alerts.py: chat.update
SITES = (ANSWER, INVOICE, STARTED, RESULT, POST, CHART, BUTTON)

FAULTS = (
    "429 once",
    "429 persistent",
    "500",
    "503",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_auth",
)

GET_URL = "files.getUploadURLExternal"
COMPLETE = "files.completeUploadExternal"
UPLOAD_STEPS = (GET_URL, UPLOAD, COMPLETE)


# ---- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One documented outcome.

    kind: ``done`` (slack_sdk retried after Retry-After; one message, update or file),
    ``reported`` (one ephemeral line to the person who asked or clicked, containing
    ``says``; nothing posted twice), ``rescheduled`` (the poll job tries again later; the
    result lands once Slack takes it), ``query failed`` (the Cost Explorer query ends
    failed, no more polling), ``failed`` (the outbox message is marked failed, never
    retried), ``kept`` (the outbox message waits and is posted once in the end, however
    many attempts it takes: never failed), ``joined`` (the bot joined the public channel and
    the call then went through), ``unillustrated`` (the digest is posted once, without its
    chart) or ``n/a`` (the fault cannot come at that site; ``anyway`` is what happens if it did).
    ``logged``: a warning or error names the fault. ``disables``: the channel's links are
    disabled and audited (``bot/services/links.py`` ``slack_refused``).
    """

    kind: str
    says: str = ""
    logged: bool = False
    disables: bool = False
    anyway: Cell | None = None

    def text(self) -> str:
        """The cell as written in docs/SLACK-FAULTS.md."""
        if self.kind == "n/a":
            assert self.anyway is not None
            return f"n/a; if it came: {self.anyway.text()}"
        logged = ", logged" if self.logged else ""
        text = {
            "done": "retried → done once",
            "reported": f"reported: `{self.says}`{logged}",
            "rescheduled": f"rescheduled{logged} → done once",
            "query failed": f"query failed{logged}",
            "failed": f"failed{logged}",
            "kept": f"kept{logged}, retried however long → sent once",
            "joined": "joined the channel, retried → done once",
            "unillustrated": f"posted once without the chart{logged}",
        }[self.kind]
        return text + ("; links disabled" if self.disables else "")

    @property
    def effective(self) -> Cell:
        return self.anyway if self.anyway is not None else self


def _reported(says: str, *, logged: bool = False, disables: bool = False) -> Cell:
    return Cell("reported", says, logged=logged, disables=disables)


def _na(anyway: Cell) -> Cell:
    return Cell("n/a", anyway=anyway)


COMMANDS = (ANSWER, INVOICE, STARTED)
UNILLUSTRATED = Cell("unillustrated", logged=True)
JOINED = Cell("joined")


def _row(*, command: Cell, result: Cell, outbox: Cell, button: Cell) -> dict[str, Cell]:
    row = dict.fromkeys(COMMANDS, command)
    # The chart is shared after the digest is posted: a refused chart never holds it back.
    row.update({RESULT: result, POST: outbox, CHART: UNILLUSTRATED, BUTTON: button})
    return {site: row[site] for site in SITES}


DONE = Cell("done")
RATE = _reported("Slack is rate limiting the bot [ratelimited]")
RESCHEDULED = Cell("rescheduled", logged=True)
KEPT = Cell("kept", logged=True)


def _server(status: int) -> dict[str, Cell]:
    said = _reported(f"Slack had a server error [{status}]")
    return _row(command=said, result=RESCHEDULED, outbox=KEPT, button=said)


def _channel(says: str, *, disables: bool = False) -> dict[str, Cell]:
    said = _reported(says, disables=disables)
    failed = Cell("failed", logged=True, disables=disables)
    row = _row(
        command=said,
        result=Cell("query failed", logged=True, disables=disables),
        outbox=failed,
        button=said,
    )
    row[CHART] = Cell("unillustrated", logged=True, disables=disables)
    if says.startswith("I am not a member"):
        # A file share needs membership (chat:write.public covers posts only): the bot joins
        # the public channel and shares it again.
        row[INVOICE] = row[CHART] = JOINED
    return row


TOKEN = _reported("Slack refused the bot's token [invalid_auth]", logged=True)

ROWS: dict[str, dict[str, Cell]] = {
    "429 once": dict.fromkeys(SITES, DONE),
    "429 persistent": _row(command=RATE, result=RESCHEDULED, outbox=KEPT, button=RATE),
    "500": _server(500),
    "503": _server(503),
    "channel_not_found": _channel("I cannot see this channel"),
    "not_in_channel": _channel("I am not a member of this channel"),
    "is_archived": _channel("This channel is archived", disables=True),
    "invalid_auth": _row(command=TOKEN, result=RESCHEDULED, outbox=KEPT, button=TOKEN),
}
TABLE: dict[tuple[str, str], Cell] = {
    (fault, site): cell for fault, row in ROWS.items() for site, cell in row.items()
}
assert tuple(ROWS) == FAULTS


def _methods(fault: str, site: str) -> tuple[str, ...]:
    """Where a cell's fault is injected: the Web API method, or each upload step it can hit."""
    if site in (INVOICE, CHART):
        if fault in ("channel_not_found", "not_in_channel", "is_archived"):
            return (COMPLETE,)  # the only step that names a channel
        if fault == "invalid_auth":
            return (GET_URL, COMPLETE)  # the upload POST carries no token
        return UPLOAD_STEPS
    return ("chat.update",) if site in (RESULT, BUTTON) else ("chat.postMessage",)


def _id(fault: str, site: str) -> str:
    return f"{fault.replace(' ', '_')}-{site.replace(' ', '_')}"


# ---- faults and what they leave behind -------------------------------------------------------------


def _install(bot, fault: str, method: str, *, times: int = 1, applied: bool = False) -> None:
    """Arm the fake for one cell. A persistent 429 outlasts slack_sdk's own retries once."""
    fake = bot.fake
    if fault == "429 once":
        fake.fail_next(method, status=429, retry_after=RETRY_AFTER)
    elif fault == "429 persistent":
        fake.fail_next(method, status=429, retry_after=RETRY_AFTER, times=SDK_ATTEMPTS * times)
    elif fault in ("500", "503"):
        fake.fail_next(method, status=int(fault), times=times, applied=applied)
    else:
        fake.fail_next(method, error=fault, times=times)


def _attempts(fault: str) -> int:
    """Requests one call makes when the fault is on: slack_sdk retries 429s only."""
    return {"429 once": 2, "429 persistent": SDK_ATTEMPTS}.get(fault, 1)


def _calls(bot, method: str) -> int:
    return len(bot.fake.upload_posts) if method == UPLOAD else len(bot.fake.calls_to(method))


def _words(fault: str) -> tuple[str, ...]:
    """What a log line about the fault contains (one of)."""
    if fault.startswith("429"):
        return ("ratelimited", "429")
    if fault in ("500", "503"):
        return (fault, "internal_error")
    return (fault,)


def _rows(bot, model) -> list:
    with bot.db.session() as session:
        return list(session.exec(select(model)))


def _link_id(bot) -> int:
    with bot.db.session() as session:
        [row] = links.links_for_channel(session, team_id=TEAM, channel_id=CHANNEL)
    assert row.id is not None
    return row.id


async def _until(predicate, timeout: float = 5.0):
    """Poll `predicate` (fake or database state) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)
    return value


# How each site names itself in the audit entry of a link it disabled.
NOTICED = {
    ANSWER: "pending answer",
    INVOICE: "invoice answer",
    STARTED: "costs answer",
    RESULT: "cost query result",
    POST: "outbox post",
    CHART: "outbox post",
    BUTTON: "alert update",
}


def _check_common(bot, cell: Cell, fault: str, site: str, caplog, sdk_waits: list[float]) -> None:
    """What every cell shares: the links, the audit log, the log lines, slack_sdk's waits."""
    [link] = _rows(bot, ChannelLink)
    with bot.db.session() as session:
        disabled = audit.entries(session, action="disable")
    if cell.disables:
        assert link.disabled_at is not None and link.disabled_reason == "channel archived"
        [entry] = disabled
        assert entry.user_id == "slack" and entry.details() == {
            "org_id": link.org_id,
            "reason": "channel archived",
            "noticed": f"{NOTICED[site]}: is_archived",
        }
    else:
        assert link.disabled_at is None and disabled == []
    if cell.logged:
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(w in line for line in lines for w in _words(fault)), lines
    if fault.startswith("429"):
        # slack_sdk waited Retry-After (plus its jitter) before each retry.
        assert sdk_waits and all(RETRY_AFTER <= w < RETRY_AFTER + 1 for w in sdk_waits)
    else:
        assert sdk_waits == []
    assert bot.fake.errors == []


def _responses(bot) -> list[dict]:
    return [r.body for r in bot.fake.responses]


async def _check_reported(bot, cell: Cell, fault: str) -> None:
    await _until(lambda: bot.fake.responses)
    [body] = _responses(bot)
    assert body["response_type"] == "ephemeral" and body.get("replace_original") is False
    assert cell.says in body["text"], body["text"]
    assert "Something went wrong" not in body["text"]
    if fault in ("channel_not_found", "not_in_channel"):
        assert "`/invite @Atlas Billing`" in body["text"]


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db(request, tmp_path_factory) -> Iterator[Database]:
    """One migrated database per engine for the module (as ``db``, PostgreSQL in a schema)."""
    admin, schema = None, ""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('slack-faults') / 'bot.db'}"
    else:
        base = postgres_base_url()
        schema = f"test_slack_faults_{uuid.uuid4().hex[:16]}"
        admin = make_engine(base)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        in_schema = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        url = in_schema.render_as_string(hide_password=False)
    database = Database(url)
    try:
        upgrade(database.engine)
        yield database
    finally:
        database.dispose()
        if admin is not None:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


@pytest.fixture(scope="module")
def module_app(sandbox_session, module_db) -> Iterator[Bot]:
    """The running app, its fake Slack and one driver, for every cell of one engine.

    One driver, so that no two cells send the same signed body (the app drops a replay).
    The sandbox is reset once, here (a reset forgets the Atlas tokens the app holds), with
    its per-org rate limit out of the way of ~60 cells in a row."""
    sandbox_session.state.reset()
    sandbox_session.state.set_switches(rate_limit=1_000_000)
    sandbox_session.data.set_today(day_of(USAGE_DAY))
    with FakeSlack() as fake:
        url = module_db.engine.url.render_as_string(hide_password=False)
        settings = bot_settings(sandbox_session, fake, url)
        deps = build_deps(settings, db=module_db, clock=now)
        server = LocalServer(build_asgi(deps, build_app(deps))).start()
        driver = SlackDriver(server.url, SECRET, fake=fake)
        try:
            yield Bot(deps, module_db, settings, fake, sandbox_session, driver, server.url)
        finally:
            server.stop()
            sandbox_session.state.reset()


def _empty(db: Database) -> None:
    with db.session() as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(delete(table))
        session.commit()


@pytest.fixture
def bot(module_app: Bot) -> Bot:
    """``tests/app/conftest.py``'s ``bot``, on the module's app: an empty database and fake."""
    module_app.fake.reset()
    _empty(module_app.db)
    state = module_app.sandbox.state
    state.requests.clear()
    state.cost_polls_before_ready = 0  # a Cost Explorer result is ready at the first poll
    return module_app


@pytest.fixture
def org(bot):
    data = bot.sandbox.data
    return data.org(data.org_ids[0])


@pytest.fixture
def sdk_waits(monkeypatch) -> list[float]:
    """The seconds slack_sdk's rate-limit handler chose to wait; the waits themselves are skipped."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(builtin_async_handlers, "asyncio", SimpleNamespace(sleep=sleep))
    return waits


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.WARNING)
    return caplog


# ---- the command sites: the answer, the invoice CSV, the "started" message --------------------------


def _commands_done(bot, subcommand: str) -> float:
    registry = bot.deps.metrics.registry
    return sum(
        registry.get_sample_value(
            "billing_bot_commands_total", {"subcommand": subcommand, "outcome": outcome}
        )
        or 0
        for outcome in ("ok", "refused", "failed")
    )


async def _command(bot, text: str) -> None:
    """Send the command and wait until its handler has finished (it counts itself)."""
    subcommand = text.split()[0]
    before = _commands_done(bot, subcommand)
    response = await bot.command(text)
    assert response.status_code == 200 and not response.text  # acknowledged, work follows
    await _until(lambda: _commands_done(bot, subcommand) == before + 1)


async def _command_answer(bot, org, fault: str, method: str, cell: Cell) -> None:
    bot.link(org.id)
    _install(bot, fault, method)
    await _command(bot, "pending")
    posted = list(bot.fake.messages(CHANNEL).values())
    assert _calls(bot, method) == _attempts(fault)  # 5xx and refusals are not retried
    if cell.kind == "done":
        assert len(posted) == 1 and "blocks" in posted[0]
        assert _responses(bot) == []
    else:
        await _check_reported(bot, cell, fault)
        assert posted == []


async def _invoice(bot, org, fault: str, method: str, cell: Cell) -> None:
    bot.link(org.id)
    invoice = org.latest_closed
    _install(bot, fault, method)
    await _command(bot, f"invoice {invoice.id}")
    posted = list(bot.fake.messages(CHANNEL).values())
    summaries = [m for m in posted if m.get("subtype") != "file_share"]
    shared = [m for m in posted if m.get("subtype") == "file_share"]
    completed = [u for u in bot.fake.uploads if u.completed]
    assert len(summaries) == 1  # the summary goes out before the upload, once
    assert _calls(bot, method) == (2 if cell.kind == "joined" else _attempts(fault))
    assert len(bot.fake.calls_to("conversations.join")) == (cell.kind == "joined")
    if cell.kind in ("done", "joined"):
        [upload] = completed
        assert upload.data is not None and upload.data.decode() == invoice.csv_text()
        assert upload.channel_id == CHANNEL and len(shared) == 1
        assert _responses(bot) == []
    else:
        await _check_reported(bot, cell, fault)
        assert completed == [] and shared == []


def _queries(bot) -> list[CostQuery]:
    return _rows(bot, CostQuery)


async def _costs_started(bot, org, fault: str, method: str, cell: Cell) -> None:
    bot.link(org.id)
    _install(bot, fault, method)
    await _command(bot, COSTS)
    posted = list(bot.fake.messages(CHANNEL).values())
    assert _calls(bot, method) == _attempts(fault)
    started = [r.operation for r in bot.atlas_requests()].count("createCostExplorerProcess")
    if cell.kind == "done":
        assert len(posted) == 1 and _responses(bot) == []
        [query] = _queries(bot)
        assert query.status == "pending" and query.message_ts == posted[0]["ts"]
        assert started == 1
    else:
        await _check_reported(bot, cell, fault)
        assert posted == [] and _queries(bot) == []
        assert started == 0  # the message comes first: no query is left without one


# ---- the poll job: the Cost Explorer result ----------------------------------------------------------


def _edited(bot) -> list[dict]:
    return [m for m in bot.fake.messages(CHANNEL).values() if "edited" in m]


async def _costs_result(bot, org, fault: str, method: str, cell: Cell) -> None:
    bot.link(org.id)
    await _command(bot, COSTS)
    [query] = _queries(bot)
    replica, clock = replica_with_clock(bot)
    ticks = 3 if fault == "invalid_auth" else 1  # the token stays bad for three polls
    _install(bot, fault, method, times=ticks)
    try:
        for tick in range(ticks):
            clock.advance(minutes=6)  # past the next poll time (backoff is at most 5 minutes)
            report = await costs.poll_due(replica)
            assert report.claimed == 1
            [query] = _queries(bot)
            if cell.kind == "done":
                assert report.done == 1 and query.status == "done"
            elif cell.kind == "rescheduled":
                assert report.waiting == 1 and query.status == "pending"
                assert query.attempts == tick + 1 and _edited(bot) == []
            else:
                assert cell.kind == "query failed"
                assert report.failed == 1 and query.status == "failed"
                assert query.error == f"slack: {fault}"
        if cell.kind == "rescheduled":  # Slack takes it now: the result lands, once
            clock.advance(minutes=6)
            assert (await costs.poll_due(replica)).done == 1
        clock.advance(hours=1)
        assert (await costs.poll_due(replica)).claimed == 0  # no more polling, whatever the end
    finally:
        await replica.atlas.aclose()
    updates = len(bot.fake.calls_to("chat.update"))
    if cell.kind == "query failed":
        assert _edited(bot) == [] and updates == 1
        return
    [edited] = _edited(bot)
    assert edited["text"].startswith(f"Cost Explorer result for org {org.id}")
    assert len(bot.fake.messages(CHANNEL)) == 1  # updated in place, never posted anew
    assert updates == ticks * _attempts(fault) + (cell.kind == "rescheduled")


# ---- the outbox job: alert and digest posts, the digest's chart ---------------------------------


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class _Attachment(TypedDict, total=False):
    """`outbox.enqueue`'s attachment arguments."""

    attachment: bytes
    attachment_name: str


def _enqueue(bot, replica, key: str, *, chart: bool) -> None:
    payload = {"text": f"threshold alert {key}", "blocks": []}
    extra: _Attachment = {}
    if chart:
        payload["image_alt"] = "Atlas spend by month"
        extra = {"attachment": PNG, "attachment_name": "atlas-digest-2026-10.png"}
    with bot.db.session() as session:
        outbox.enqueue(
            session,
            key=key,
            team_id=TEAM,
            channel_id=CHANNEL,
            payload=payload,
            now=replica.clock(),
            **extra,
        )


def _message(bot, key: str) -> OutboxMessage:
    [row] = [r for r in _rows(bot, OutboxMessage) if r.key == key]
    return row


def _posted_with(bot, key: str) -> list[dict]:
    return [
        m
        for m in bot.fake.messages(CHANNEL).values()
        if (m.get("metadata") or {}).get("event_payload", {}).get("key") == key
    ]


def _check_sent_once(bot, key: str, *, chart: bool) -> None:
    row = _message(bot, key)
    [message] = _posted_with(bot, key)
    assert row.status == "sent" and row.message_ts == message["ts"]
    if chart:
        [upload] = [u for u in bot.fake.uploads if u.completed]
        assert (upload.channel_id, upload.thread_ts, upload.data) == (CHANNEL, row.message_ts, PNG)


async def _outbox(bot, org, fault: str, method: str, cell: Cell, *, chart: bool) -> None:
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    try:
        variants = [False]
        if cell.kind == "kept" and fault in ("500", "503") and method == "chat.postMessage":
            # And once where Slack did post before answering 5xx: first, while the replica's
            # clock is still near Slack's (the history search looks back from the queue time).
            variants.insert(0, True)
        for n, applied in enumerate(variants):
            key = f"alert:1:2026-11:{method}:{n}"
            _enqueue(bot, replica, key, chart=chart)
            await _outbox_cell(bot, replica, clock, key, fault, method, cell, applied, chart)
    finally:
        await replica.atlas.aclose()


def _outbox_wait(fault: str, method: str, attempts: int) -> float:
    """Retry-After when Slack sent one with the error (the upload POST's is lost in slack_sdk's
    SlackRequestError), else the outbox's backoff."""
    if fault == "429 persistent" and method != UPLOAD:
        return RETRY_AFTER
    return backoff(attempts)


async def _outbox_cell(bot, replica, clock, key, fault, method, cell, applied, chart) -> None:
    deliver = deliver_due
    # However many attempts for "kept"; once when Slack did post before its 5xx (the retry
    # then finds the message in the history).
    ticks = MAX_ATTEMPTS + 1 if cell.kind == "kept" and not applied else 1
    searched = len(bot.fake.calls_to("conversations.history"))
    _install(bot, fault, method, times=ticks, applied=applied)
    report = await deliver(replica)
    assert report.claimed == 1
    row = _message(bot, key)
    if cell.kind == "done":
        assert report.sent == 1
        _check_sent_once(bot, key, chart=chart)
        return
    if cell.kind == "failed":
        assert report.failed == 1
        assert row.status == "failed" and row.last_error == f"slack: {fault}"
        assert _posted_with(bot, key) == []
        clock.advance(hours=1)
        assert (await deliver(replica)).claimed == 0  # never retried (the fault is gone now)
        assert _posted_with(bot, key) == []
        return
    # kept: the message waits; it is posted once when Slack takes it.
    for attempt in range(1, ticks + 1):
        if attempt > 1:
            clock.advance(seconds=_outbox_wait(fault, method, attempt - 1) + 1)
            report = await deliver(replica)
        assert report.retried == 1, report
        row = _message(bot, key)
        assert row.status == "pending" and row.attempts == attempt and row.last_error
        assert len(_posted_with(bot, key)) == applied  # Slack posted it before its 5xx, or not
    wait = _outbox_wait(fault, method, ticks)
    assert abs((row.not_before - clock()).total_seconds() - wait) < 1
    clock.advance(seconds=wait - 1)
    assert (await deliver(replica)).claimed == 0
    clock.advance(seconds=2)
    report = await deliver(replica)
    assert (report.recovered, report.sent) == ((1, 0) if applied else (0, 1))
    _check_sent_once(bot, key, chart=chart)
    # A retry after a 5xx looks for an earlier post of the key first (Slack may have carried
    # the post out before failing); after a 429 or a token error it surely did not go out.
    lookups = ticks if fault in ("500", "503") else 0
    assert len(bot.fake.calls_to("conversations.history")) - searched == lookups


# ---- the alert buttons ---------------------------------------------------------------------------


async def _button(bot, org, fault: str, method: str, cell: Cell) -> None:
    bot.link(org.id)
    with bot.db.session() as session:
        thresholds.set_threshold(
            session, link_id=_link_id(bot), amount_cents=1000, updated_by="U_ADMIN"
        )
    replica, _ = replica_with_clock(bot)
    try:
        assert (await check_thresholds(replica)).alerts == 1
        assert (await deliver_due(replica)).sent == 1
    finally:
        await replica.atlas.aclose()
    [(ts, alert)] = bot.fake.messages(CHANNEL).items()
    [actions] = [b for b in alert["blocks"] if b["type"] == "actions"]
    alert_id = actions["elements"][0]["value"]
    payload = block_action(
        "alert_ack",
        alert_id,
        user_id="U_MEMBER",
        message_ts=ts,
        response_url=bot.fake.response_url("click"),
    )
    payload["message"]["blocks"] = alert["blocks"]
    _install(bot, fault, method)
    assert (await bot.driver.action(payload)).status_code == 200
    if cell.kind == "done":
        [edited] = await _until(lambda: _edited(bot))
        assert "Acknowledged by <@U_MEMBER>" in json.dumps(edited["blocks"])
        assert _responses(bot) == []
    else:
        await _check_reported(bot, cell, fault)
        assert _edited(bot) == []
    assert _calls(bot, method) == _attempts(fault)
    # The click is recorded either way.
    [row] = [a for a in _rows(bot, Alert) if str(a.id) == alert_id]
    assert row.acknowledged_by == "U_MEMBER" and row.acknowledged_at is not None


# ---- the grid ------------------------------------------------------------------------------------


async def _chart(bot, org, fault, method, cell) -> None:
    """The digest is posted first; its chart follows in the thread, or is left out."""
    bot.link(org.id)
    replica, _ = replica_with_clock(bot)
    try:
        key = f"digest:1:2026-11:{method}"
        _enqueue(bot, replica, key, chart=True)
        _install(bot, fault, method)
        report = await deliver_due(replica)
    finally:
        await replica.atlas.aclose()
    assert (report.claimed, report.sent) == (1, 1), report
    row = _message(bot, key)
    [message] = _posted_with(bot, key)
    assert row.status == "sent" and row.message_ts == message["ts"]
    assert not [b for b in message.get("blocks", []) if b["type"] == "image"]
    completed = [u for u in bot.fake.uploads if u.completed]
    assert _calls(bot, method) == (2 if cell.kind == "joined" else _attempts(fault))
    assert len(bot.fake.calls_to("conversations.join")) == (cell.kind == "joined")
    if cell.kind in ("done", "joined"):
        [upload] = completed  # re-uploads after a failed step leave no second file
        assert (upload.channel_id, upload.thread_ts, upload.data) == (CHANNEL, row.message_ts, PNG)
        assert row.file_id == upload.file_id
    else:
        assert completed == [] and row.file_id is None


async def _post(bot, org, fault, method, cell) -> None:
    await _outbox(bot, org, fault, method, cell, chart=False)


DRIVERS = {
    ANSWER: _command_answer,
    INVOICE: _invoice,
    STARTED: _costs_started,
    RESULT: _costs_result,
    POST: _post,
    CHART: _chart,
    BUTTON: _button,
}


@pytest.mark.parametrize(("fault", "site"), list(TABLE), ids=[_id(*c) for c in TABLE])
async def test_cell(bot, org, logs, sdk_waits, fault, site):
    cell = TABLE[fault, site].effective
    for n, method in enumerate(_methods(fault, site)):
        if n:  # the next upload step, on a clean fake Slack
            bot.fake.reset()
            logs.clear()
            sdk_waits.clear()
        try:
            await DRIVERS[site](bot, org, fault, method, cell)
            _check_common(bot, cell, fault, site, logs, sdk_waits)
        except Exception as exc:
            exc.add_note(f"fault injected at {method}")
            raise


# ---- the doc and the table -----------------------------------------------------------------------


def _doc_table() -> tuple[list[str], dict[tuple[str, str], str]]:
    """The fault table in the doc: its columns and its cells."""
    columns, faults, cells = fault_table(DOC)
    assert faults == list(FAULTS)
    return columns, cells


def test_the_doc_lists_the_same_cells():
    columns, cells = _doc_table()
    assert columns == list(SITES)
    assert cells == {key: cell.text() for key, cell in TABLE.items()}


# ---- beyond the grid: how long the poll job keeps a result Slack will not take ------------------


@pytest.mark.parametrize("fault", ["invalid_auth", "503"])
async def test_a_result_slack_keeps_refusing_is_kept_until_the_query_expires(bot, org, logs, fault):
    """The "rescheduled" cells last until the query is ``MAX_AGE`` old, then it ends expired:
    polling (Atlas included) does not go on for ever."""
    bot.link(org.id)
    await _command(bot, COSTS)
    [query] = _queries(bot)
    replica, clock = replica_with_clock(bot)
    _install(bot, fault, "chat.update", times=1000)
    try:
        while query.status == "pending" and clock() - query.created_at < costs.MAX_AGE * 2:
            clock.advance(minutes=6)
            await costs.poll_due(replica)
            [query] = _queries(bot)
        assert query.status == "expired" and query.error == f"slack: {_words(fault)[-1]}"
        assert clock() - query.created_at > costs.MAX_AGE
        polls = len(bot.fake.calls_to("chat.update"))
        clock.advance(hours=1)
        assert (await costs.poll_due(replica)).claimed == 0
        assert len(bot.fake.calls_to("chat.update")) == polls
    finally:
        await replica.atlas.aclose()
    assert _edited(bot) == []


# ---- beyond the grid: slack_sdk's waits against the outbox lease ----------------------------------


async def test_a_long_retry_after_does_not_make_two_replicas_post_the_same_message(
    bot, org, monkeypatch
):
    """slack_sdk would sleep Retry-After inside ``chat_postMessage`` up to three times, and a
    claim lasts ``LEASE_SECONDS``: had the waits outlasted the lease, another replica would
    claim the message, find nothing in the history and post it, then the first one's retry
    too. A Retry-After above ``MAX_INLINE_RETRY_AFTER`` is therefore not waited for in the
    call: the outbox takes the message back and retries it after Retry-After, on any replica."""
    bot.link(org.id)
    first, clock = replica_with_clock(bot)
    second = dataclasses.replace(bot.replica(), clock=clock)
    key = "alert:1:2026-11:100"
    _enqueue(bot, first, key, chart=False)
    retry_after = 61  # Slack's answer for a burst to one channel can be a minute
    bot.fake.fail_next("chat.postMessage", status=429, retry_after=retry_after, times=2)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds=seconds)

    monkeypatch.setattr(builtin_async_handlers, "asyncio", SimpleNamespace(sleep=sleep))
    try:
        assert (await deliver_due(first)).retried == 1
        assert slept == []  # not waited for inside the call
        assert (await deliver_due(second)).claimed == 0  # not before Retry-After
        clock.advance(seconds=retry_after + 1)
        assert (await deliver_due(second)).retried == 1  # the second 429
        clock.advance(seconds=retry_after + 1)
        assert (await deliver_due(first)).sent == 1
        clock.advance(seconds=LEASE_SECONDS * 2)
        assert (await deliver_due(second)).claimed == 0
    finally:
        await first.atlas.aclose()
        await second.atlas.aclose()
    assert slept == []
    assert len(_posted_with(bot, key)) == 1


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [("inf", MAX_RETRY_AFTER), ("1e12", MAX_RETRY_AFTER), ("nan", None), ("soon", None)],
)
async def test_a_429_with_an_unreadable_retry_after_is_retried_later(bot, org, retry_after, wait):
    """``inf`` once overflowed the outbox's ``timedelta`` and ``nan`` slipped past its checks:
    the message is kept and retried, after the cap or after the outbox's own back-off."""
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    key = f"alert:1:2026-11:100:{retry_after}"
    _enqueue(bot, replica, key, chart=False)
    bot.fake.fail_next("chat.postMessage", status=429, retry_after=retry_after, times=4)
    try:
        report = await deliver_due(replica)
    finally:
        await replica.atlas.aclose()
    assert report.retried == 1
    row = _message(bot, key)
    expected = wait if wait is not None else backoff(row.attempts - 1)
    assert row.status == "pending"
    assert abs((row.not_before - clock()).total_seconds() - expected) < 1


async def test_only_an_unknown_refusal_exhausts_the_outbox_attempts(bot, org, logs):
    """A refusal Slack has no word for (``ok: false`` with an error the bot does not know)
    stops after ``MAX_ATTEMPTS``: Slack will not take that message. 5xx, 429 and token
    errors never do (the "kept" cells): an outage or a revoked token must not lose an alert."""
    bot.link(org.id)
    replica, clock = replica_with_clock(bot)
    key = "alert:1:2026-11:100"
    _enqueue(bot, replica, key, chart=False)
    bot.fake.fail_next("chat.postMessage", error="fatal_error", times=MAX_ATTEMPTS)
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            report = await deliver_due(replica)
            last = attempt == MAX_ATTEMPTS
            assert (report.claimed, report.failed, report.retried) == (1, last, not last)
            clock.advance(seconds=backoff(attempt) + 1)
    finally:
        await replica.atlas.aclose()
    row = _message(bot, key)
    assert row.status == "failed" and row.last_error == "slack: fatal_error"
    assert _posted_with(bot, key) == []
    assert any("refused it for good" in r.getMessage() for r in logs.records)


# ---- beyond the grid: the connection to Slack fails --------------------------------------------


async def test_a_connection_slack_drops_is_one_line_to_the_caller_not_an_error(bot, org, logs):
    """A post whose connection drops is not sent again (Slack may have taken it: see
    ``SafeConnectionErrorRetryHandler``); the caller reads one line, not "Something went
    wrong", and the command counts as failed."""
    bot.link(org.id)
    failed = {"subcommand": "pending", "outcome": "failed"}
    registry = bot.deps.metrics.registry
    before = registry.get_sample_value("billing_bot_commands_total", failed) or 0
    bot.fake.fail_next("chat.postMessage", status=0)  # 0: the connection drops
    await _command(bot, "pending")
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    assert bot.fake.messages(CHANNEL) == {}
    [said] = [r["text"] for r in _responses(bot)]
    assert said.startswith("Slack did not answer the bot") and "Something went wrong" not in said
    assert registry.get_sample_value("billing_bot_commands_total", failed) == before + 1
    assert not [r for r in logs.records if r.exc_info]  # expected, so no traceback logged
