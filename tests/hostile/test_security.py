"""The defences docs/SECURITY.md claims that no other test proves: channel crossing, privilege,
forged interactions, injection, secrets and denial of service, end to end against the running bot
(the sandbox Atlas, the fake Slack, a real database on each engine)."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from bot.core.config import Settings
from bot.core.secrets import KEY_FILE_NAME, load_or_create_key
from bot.render.credentials import CALLBACK_ID
from bot.runtime.app import build_app, build_deps
from bot.runtime.localserver import LocalServer
from bot.runtime.server import build_asgi
from bot.sandbox import Fault
from handlers.commands import WORK_AT_ONCE
from handlers.credentials import read_form
from storage import (
    Database,
    alerts,
    audit,
    channel_config,
    credentials,
    digests,
    links,
    thresholds,
)
from tests.app.conftest import CHANNEL, OTHER_CHANNEL, TEAM, bot_settings
from tests.app.helpers import eventually
from tests.fakes.clock import now
from tests.fakes.slack import block_action, view_submission

ROOT = Path(__file__).resolve().parents[2]
ACK_SECONDS = 3.0  # Slack's limit for acknowledging a command
PUBLIC = ("chat.postMessage", "chat.update", "views.open", "files.completeUploadExternal")
BROADCASTS = ("<!channel", "<!here", "<!everyone")
NOT_LINKED = "is not linked to this channel"
ADMINS_ONLY = "Only workspace admins"


# ---- helpers ------------------------------------------------------------------------------------


async def answer(bot, text: str, *, user_id: str = "U_ADMIN", **fields) -> dict:
    """Send `/atlas-billing text`; the reply in the acknowledgement or, after it, on the
    command's own response_url (what `respond()` posts)."""
    form = bot.driver.command_body(text, user_id=user_id, **fields)
    key = form["response_url"].rsplit("/", 1)[1]
    response = await bot.driver.send(bot.driver.request(form))
    assert response.status_code == 200, response.text
    if response.content:
        return response.json()
    [reply] = await bot.fake.wait_for_async(
        lambda: [r.body for r in bot.fake.responses if r.key == key]
    )
    return reply


def months_back(bot, months: int) -> str:
    today = bot.deps.today()
    index = today.year * 12 + today.month - 1 - months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def link_of(bot, org_id: str, channel: str = CHANNEL):
    with bot.db.session() as session:
        rows = links.links_for_channel(session, team_id=TEAM, channel_id=channel)
    return next(row for row in rows if row.org_id == org_id)


def follow(bot, org_id: str, channel: str) -> None:
    """A link with a threshold, a digest schedule and an on-call target, through storage."""
    bot.link(org_id, channel=channel)
    link_id = link_of(bot, org_id, channel).id
    with bot.db.session() as session:
        thresholds.set_threshold(
            session, link_id=link_id, amount_cents=123_400, updated_by="U_ADMIN"
        )
        digests.set_schedule(
            session,
            link_id=link_id,
            day="1",
            hour=9,
            minute=0,
            next_run_at=bot.deps.clock() + timedelta(days=20),
            updated_by="U_ADMIN",
        )
        channel_config.set_oncall(
            session,
            team_id=TEAM,
            channel_id=channel,
            kind="user",
            target_id="U0ONCALL",
            updated_by="U_ADMIN",
        )


def channel_state(bot, channel: str) -> dict:
    """Everything a channel's commands can change: links, thresholds, schedules, on-call."""
    with bot.db.session() as session:
        rows = links.links_for_channel(session, team_id=TEAM, channel_id=channel)
        state: dict = {}
        for row in rows:
            assert row.id is not None
            threshold = thresholds.threshold_for(session, link_id=row.id)
            schedule = digests.schedule_for(session, link_id=row.id)
            state[row.org_id] = (
                threshold.amount_cents if threshold else None,
                (schedule.day, schedule.hour, schedule.minute, schedule.next_run_at)
                if schedule
                else None,
            )
        config = channel_config.get_config(session, team_id=TEAM, channel_id=channel)
        state["oncall"] = (config.oncall_kind, config.oncall_id) if config else None
    return state


def audit_actions(bot) -> list[str]:
    with bot.db.session() as session:
        return [entry.action for entry in audit.entries(session)]


def public_traffic(bot) -> str:
    """Everything the bot made visible in a channel (or opened as a form), as one string."""
    return json.dumps([c.params for c in bot.fake.calls if c.method in PUBLIC], default=str)


def record_alert(bot, org_id: str) -> int:
    """A threshold alert of the org's link in CHANNEL, as the thresholds job stores it."""
    link = link_of(bot, org_id)
    with bot.db.session() as session:
        [alert] = alerts.record_levels(
            session,
            link=link,
            period="2026-11",
            levels=["100"],
            amount_cents=200_000,
            threshold_cents=100_000,
            forecast_cents=None,
        )
        assert alert.id is not None
        return alert.id


def stored_alert(bot, alert_id: int):
    with bot.db.session() as session:
        return alerts.get_alert(session, id=alert_id)


def connect_form(creds, private_metadata: str, user_id: str = "U_ADMIN") -> dict:
    """A submission of the `connect` modal with the sandbox's (valid) API key pair."""
    return view_submission(
        CALLBACK_ID,
        {
            "kind": {"value": {"type": "radio_buttons", "selected_option": {"value": "api_key"}}},
            "public_id": {"value": creds.public_key},
            "secret": {"value": creds.private_key},
        },
        private_metadata=private_metadata,
        user_id=user_id,
    )


def stored_credential(bot, org_id: str):
    with bot.db.session() as session:
        return credentials.get_credential(session, org_id=org_id)


@pytest.fixture
def _working_directory(tmp_path, monkeypatch):
    # A connect that succeeds generates the key file: next to a SQLite file, or in the working
    # directory for PostgreSQL. Keep it in the test's own directory.
    monkeypatch.chdir(tmp_path)


# ---- forged interactions --------------------------------------------------------------------------


@pytest.mark.usefixtures("_working_directory")
async def test_forged_or_stale_clicks_and_form_submissions_get_401_and_change_nothing(bot, sandbox):
    org = sandbox.data.org_ids[0]
    bot.link(org)
    alert_id = record_alert(bot, org)
    click = block_action(
        "alert_snooze",
        str(alert_id),
        channel_id=CHANNEL,
        message_ts="1700000000.000100",
        response_url=bot.fake.response_url("click"),
    )
    metadata = json.dumps({"org_id": org, "team_id": TEAM, "channel_id": CHANNEL})
    form = connect_form(sandbox.data.credentials, metadata)
    for payload in (click, form):
        for options in ({"signature": "missing"}, {"signature": "wrong"}, {"stale": True}):
            response = await bot.driver.action(payload, **options)
            assert response.status_code == 401, (payload["type"], options, response.text)
    assert bot.fake.calls == [] and bot.fake.responses == []
    assert list(sandbox.state.requests) == []
    alert = stored_alert(bot, alert_id)
    assert alert.snoozed_by is None and alert.acknowledged_by is None
    assert stored_credential(bot, org) is None
    assert audit_actions(bot) == []
    # The same submission, signed, is taken: the refusals above were the signature's doing.
    response = await bot.driver.action(form)
    assert response.status_code == 200 and response.json()["response_action"] == "update"
    await eventually(lambda: stored_credential(bot, org), what="the credentials to be stored")
    assert stored_credential(bot, org).public_id == sandbox.data.credentials.public_key


# ---- channel crossing -------------------------------------------------------------------------------


async def test_a_channel_cannot_read_change_or_unlink_an_org_linked_only_elsewhere(bot, sandbox):
    here, elsewhere = sandbox.data.org_ids[:2]
    bot.link(here)
    follow(bot, elsewhere, OTHER_CHANNEL)
    theirs = channel_state(bot, OTHER_CHANNEL)
    invoice = sandbox.data.org(elsewhere).latest_closed.id
    start, end = months_back(bot, 2), months_back(bot, 0)
    for text in (
        f"pending {elsewhere}",
        f"invoice {invoice} {elsewhere}",
        f"costs {start} {end} {elsewhere}",
        f"digest now {elsewhere}",
        f"threshold 10 {elsewhere}",
        f"threshold off {elsewhere}",
        f"unlink {elsewhere}",
    ):
        reply = await answer(bot, text)
        assert reply["response_type"] == "ephemeral", (text, reply)
        assert f"`{elsewhere}` {NOT_LINKED}" in reply["text"], (text, reply)
    # This channel's own settings change this channel only.
    for text in ("digest off", "oncall off"):
        posts = len(bot.fake.calls_to("chat.postMessage"))
        await bot.command(text)
        await bot.fake.wait_for_async(
            lambda posts=posts: len(bot.fake.calls_to("chat.postMessage")) > posts
        )
    status = await answer(bot, "status")
    assert here in status["text"] and elsewhere not in status["text"]
    # The same channel ID under another workspace sees nothing of this one.
    reply = await answer(bot, "pending", team_id="T2", channel_id=OTHER_CHANNEL)
    assert "not linked to an Atlas organization" in reply["text"]

    assert channel_state(bot, OTHER_CHANNEL) == theirs
    assert sandbox.state.requests_for(org_id=elsewhere) == []
    assert bot.fake.calls_to("views.open") == []
    posted = bot.fake.calls_to("chat.postMessage")
    assert {p["channel"] for p in posted} == {CHANNEL}
    assert elsewhere not in public_traffic(bot)


async def test_an_invoice_of_another_org_is_asked_for_under_this_channels_org_only(bot, sandbox):
    here, elsewhere = sandbox.data.org_ids[:2]
    bot.link(here)
    theirs = sandbox.data.org(elsewhere).latest_closed
    reply = await answer(bot, f"invoice {theirs.id}")
    assert reply["response_type"] == "ephemeral" and "404" in reply["text"]
    assert [r.path for r in bot.atlas_requests()] == [
        f"/api/atlas/v2/orgs/{here}/invoices/{theirs.id}"
    ]
    assert bot.fake.calls_to("chat.postMessage") == [] and bot.fake.uploads == []


async def test_alert_buttons_act_only_in_the_channel_the_alert_was_posted_in(bot, sandbox):
    org = sandbox.data.org_ids[0]
    bot.link(org)
    alert_id = record_alert(bot, org)
    posted = await bot.driver.client.post(
        bot.fake.base_url + "chat.postMessage",
        json={"channel": CHANNEL, "text": "the alert"},
        headers={"Authorization": "Bearer xoxb-test"},
    )
    ts = posted.json()["ts"]
    for action in ("alert_ack", "alert_snooze"):
        key = f"from-elsewhere-{action}"
        click = block_action(
            action,
            str(alert_id),
            user_id="U_MEMBER",
            channel_id=OTHER_CHANNEL,
            message_ts=ts,
            response_url=bot.fake.response_url(key),
        )
        assert (await bot.driver.action(click)).status_code == 200
        [reply] = await bot.fake.wait_for_async(
            lambda key=key: [r.body for r in bot.fake.responses if r.key == key]
        )
        assert "not known here" in reply["text"]
    alert = stored_alert(bot, alert_id)
    assert (alert.acknowledged_by, alert.snoozed_by, alert.snoozed_until) == (None, None, None)
    assert bot.fake.calls_to("chat.update") == []
    # The same click in the alert's own channel is taken.
    click = block_action(
        "alert_ack",
        str(alert_id),
        user_id="U_MEMBER",
        channel_id=CHANNEL,
        message_ts=ts,
        response_url=bot.fake.response_url("from-here"),
    )
    assert (await bot.driver.action(click)).status_code == 200
    [update] = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.update"))
    assert (update["channel"], update["ts"]) == (CHANNEL, ts)
    assert stored_alert(bot, alert_id).acknowledged_by == "U_MEMBER"


async def test_a_connect_form_whose_metadata_is_not_ours_is_refused_before_atlas(bot, sandbox):
    org = sandbox.data.org_ids[0]

    def metadata(**changes) -> str:
        data = {"org_id": org, "team_id": TEAM, "channel_id": CHANNEL, **changes}
        return json.dumps({k: v for k, v in data.items() if v is not None})

    for bad in (
        "",
        "not JSON",
        "[]",
        "null",
        metadata(org_id="../" + org[3:]),
        metadata(org_id=org[:21] + "%2F"),
        metadata(org_id=org + "/invoices"),
        metadata(org_id=org.upper()),
        metadata(org_id=None),
        metadata(channel_id=None),
        metadata(team_id="T2"),
    ):
        response = await bot.driver.action(connect_form(sandbox.data.credentials, bad))
        assert response.status_code == 200, response.text
        errors = response.json()["errors"]
        assert "out of date" in errors["public_id"], (bad, errors)
    assert list(sandbox.state.requests) == []
    # Not even the admin check: the form is refused first (Bolt's own auth.test aside).
    assert [c.method for c in bot.fake.calls if c.method != "auth.test"] == []
    assert stored_credential(bot, org) is None


# ---- privilege --------------------------------------------------------------------------------------


async def test_members_cannot_unlink_connect_or_switch_alerting_off(bot, sandbox):
    org, other = sandbox.data.org_ids[:2]
    follow(bot, org, CHANNEL)
    before = channel_state(bot, CHANNEL)
    for text in (
        f"unlink {org}",
        "threshold off",
        f"threshold 1 {org}",
        "oncall off",
        "oncall <@U0MEMBER|me>",
        "digest off",
        "digest on last 23:59",
        f"link {other}",
        f"connect {org}",
    ):
        reply = await answer(bot, text, user_id="U_MEMBER")
        assert reply["response_type"] == "ephemeral", (text, reply)
        assert ADMINS_ONLY in reply["text"], (text, reply)
    assert channel_state(bot, CHANNEL) == before
    assert audit_actions(bot) == []
    assert bot.atlas_requests() == []
    # `connect` opens its modal at once (the trigger's 3 s), then says why not: never the form.
    [view] = bot.fake.views
    assert ADMINS_ONLY in json.dumps(view["blocks"]) and "callback_id" not in view
    assert bot.fake.calls_to("chat.postMessage") == []


async def test_workspace_owners_and_primary_owners_are_admins(bot, sandbox):
    first, second = sandbox.data.org_ids[:2]
    bot.fake.add_user("U_PRIMARY", is_primary_owner=True, name="primary")
    for n, (user, org) in enumerate((("U_OWNER", first), ("U_PRIMARY", second)), 1):
        await bot.command(f"link {org}", user_id=user)
        await bot.fake.wait_for_async(lambda n=n: len(bot.fake.calls_to("chat.postMessage")) == n)
    assert set(channel_state(bot, CHANNEL)) == {first, second, "oncall"}


@pytest.mark.usefixtures("_working_directory")
async def test_the_admin_check_fails_closed_when_slack_cannot_answer(bot, sandbox):
    org = sandbox.data.org_ids[0]
    for fault in ({"error": "user_not_found"}, {"status": 500}):
        bot.fake.fail_next("users.info", **fault)
        reply = await answer(bot, f"link {org}")
        # Whatever the wording, the caller is told, and nothing is linked (checked below).
        assert reply["response_type"] == "ephemeral" and "Slack" in reply["text"], reply
    assert channel_state(bot, CHANNEL) == {"oncall": None}
    assert bot.atlas_requests() == []
    # The connect form asks again at submission; Slack failing then stores nothing either.
    await bot.command(f"connect {org}")
    [view] = await bot.fake.wait_for_async(lambda: bot.fake.view_updates)
    bot.fake.fail_next("users.info", error="fatal_error")
    response = await bot.driver.action(
        connect_form(sandbox.data.credentials, view["private_metadata"])
    )
    assert response.json()["response_action"] == "errors"
    assert list(sandbox.state.requests) == []
    assert stored_credential(bot, org) is None


# ---- injection ---------------------------------------------------------------------------------------


async def test_broadcast_mentions_typed_into_commands_never_reach_a_public_message(bot, sandbox):
    org = sandbox.data.org_ids[0]
    bot.link(org)
    for text in (
        "<!channel>",
        "help <!here>",
        "link <!channel>",
        "pending <!everyone>",
        f"invoice <!channel> {org}",
        f"costs <!here> {months_back(bot, 0)}",
        f"costs {months_back(bot, 2)} {months_back(bot, 0)} by <!channel>",
        "threshold <!channel>",
        "threshold 10 <!here>",
        "oncall <!channel>",
        "oncall <!here>",
        "oncall <@U0ONCALL|<!channel>>",
        "oncall <!subteam^S0ONCALL|<!everyone>>",
        "digest on <!channel>",
        "digest now <!here>",
        "status <!channel>",
        "connect <!channel>",
    ):
        reply = await answer(bot, text)
        assert reply["response_type"] == "ephemeral", (text, reply)
    # A mention's label is dropped: only the ID reaches the channel.
    await bot.command("oncall <@U0ONCALL|@channel>")
    [posted] = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    assert posted["text"].endswith("to <@U0ONCALL>.") and "@channel" not in posted["text"]
    traffic = public_traffic(bot)
    assert not [b for b in BROADCASTS if b in traffic], traffic
    assert all(r.body.get("response_type") == "ephemeral" for r in bot.fake.responses)


async def test_atlas_text_shown_in_a_channel_message_is_escaped(bot, sandbox):
    org = sandbox.data.org_ids[0]
    bot.link(org)
    detail = "<!channel> read <https://evil.example/fix|the fix> & <@U0ATTACK>"
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=400,
            operation="createCostExplorerProcess",
            body=json.dumps(
                {"error": 400, "errorCode": "INVALID_QUERY", "reason": "Bad", "detail": detail}
            ),
            content_type="application/json",
        )
    )
    await bot.command(f"costs {months_back(bot, 2)} {months_back(bot, 0)}")
    [update] = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.update"))
    blocks = json.dumps(update["blocks"])
    assert "INVALID_QUERY" in blocks
    assert "&lt;!channel&gt;" in blocks and "&amp;" in blocks
    assert (
        "<!channel>" not in blocks and "<https://evil" not in blocks and "<@U0ATTACK>" not in blocks
    )
    # The fallback text (notifications, previews) too.
    assert "&lt;!channel&gt;" in update["text"] and "<!channel>" not in update["text"]


async def test_atlas_text_in_a_failed_digest_notice_is_escaped(bot, sandbox):
    from bot.services import costs
    from bot.slack.outbox import deliver_due
    from tests.app.helpers import replica_with_clock

    org = sandbox.data.org_ids[0]
    bot.link(org)
    detail = "<!channel> read <https://evil.example/fix|the fix>"
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=400,
            operation="getCostExplorerUsage",
            body=json.dumps(
                {"error": 400, "errorCode": "INVALID_QUERY", "reason": "Bad", "detail": detail}
            ),
            content_type="application/json",
        )
    )
    await bot.command("digest now")
    await bot.fake.wait_for_async(lambda: bot.fake.responses)
    replica, clock = replica_with_clock(bot)
    for _ in range(3):
        clock.advance(minutes=5)
        await costs.poll_due(replica)
        await deliver_due(replica)
    [notice] = bot.fake.calls_to("chat.postMessage")
    assert "could not be produced" in notice["text"] and "INVALID_QUERY" in notice["text"]
    assert "&lt;!channel&gt;" in notice["text"]
    assert "<!channel>" not in notice["text"] and "<https://evil" not in notice["text"]
    await replica.atlas.aclose()


RAW_SQL_CALLS = {"text", "exec_driver_sql", "execute"}


def _constant(node: ast.expr) -> bool:
    """A literal, a module constant (UPPER_CASE) or arithmetic on those."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper()
    if isinstance(node, ast.BinOp):
        return _constant(node.left) and _constant(node.right)
    if isinstance(node, ast.UnaryOp):
        return _constant(node.operand)
    return False


def _builds_a_string(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr | ast.BinOp):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("format", "join", "replace")
    )


def test_sql_is_never_built_from_strings_at_run_time():
    """Every query goes through SQLAlchemy with bound parameters; the few raw SQL strings are
    literals (with module constants at most), so no input can become SQL."""
    seen, built = 0, []
    for package in ("bot", "handlers", "storage"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name not in RAW_SQL_CALLS:
                    continue
                sql = node.args[0]
                if name == "execute" and not (
                    _builds_a_string(sql) or isinstance(sql, ast.Constant)
                ):
                    continue  # a SQLAlchemy statement object
                seen += 1
                literal = isinstance(sql, ast.Constant) and isinstance(sql.value, str)
                formatted = isinstance(sql, ast.JoinedStr) and all(
                    _constant(part.value)
                    for part in sql.values
                    if isinstance(part, ast.FormattedValue)
                )
                if not (literal or formatted):
                    built.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert seen >= 5, "the scan found no raw SQL at all: it is not looking where it should"
    assert built == [], built


# ---- secrets -------------------------------------------------------------------------------------------


def test_a_key_file_others_can_read_is_still_used_but_warned_about(tmp_path, caplog):
    settings = Settings(_env_file=None, DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}")
    key = load_or_create_key(settings)
    path = tmp_path / KEY_FILE_NAME

    def load() -> list[logging.LogRecord]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="bot.core.secrets"):
            assert load_or_create_key(settings) == key
        assert all(key not in record.getMessage() for record in caplog.records)
        return [record for record in caplog.records if record.levelno >= logging.WARNING]

    assert load() == []  # 0600, as generated: nothing to say
    path.chmod(0o640)
    [warning] = load()
    assert "can be read by other users" in warning.getMessage()
    assert f"chmod 600 {path}" in warning.getMessage()


def test_the_connect_form_keeps_its_secret_out_of_its_repr():
    secret = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"
    form = read_form(
        {
            "kind": {"value": {"selected_option": {"value": "api_key"}}},
            "public_id": {"value": {"type": "plain_text_input", "value": "abcdefgh"}},
            "secret": {"value": {"type": "plain_text_input", "value": f"  {secret} "}},
        }
    )
    assert form.secret == secret
    assert secret not in repr(form) and secret not in str(form) and secret not in f"{form!r}"


async def test_the_bots_own_secrets_never_reach_slack_or_the_logs(bot, sandbox, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    org = sandbox.data.org_ids[0]
    bot.link(org)
    # Failures whose messages quote Atlas, Slack or the request: none may quote a secret.
    sandbox.state.add_fault(
        Fault(kind="status", status=401, operation="listInvoicePending", times=None)
    )
    assert "401" in (await answer(bot, "pending"))["text"]
    sandbox.state.clear_faults()
    assert "404" in (await answer(bot, "link " + "0" * 24))["text"]
    assert (await bot.command("pending", signature="wrong")).status_code == 401
    bot.fake.fail_next("chat.postMessage", error="not_in_channel")
    assert "/invite" in (await answer(bot, "pending"))["text"]
    await answer(bot, "threshold lots")

    bearer = {
        r.headers["authorization"].removeprefix("Bearer ")
        for r in sandbox.state.requests
        if r.headers.get("authorization", "").startswith("Bearer ")
    }
    assert bearer, "the configured service account was never used"
    settings = bot.settings
    secrets = {
        "SLACK_SIGNING_SECRET": settings.SLACK_SIGNING_SECRET,
        "SLACK_BOT_TOKEN": settings.SLACK_BOT_TOKEN,
        "MONGODB_ATLAS_CLIENT_SECRET": settings.MONGODB_ATLAS_CLIENT_SECRET,
        **{f"Atlas bearer token {n}": token for n, token in enumerate(sorted(bearer))},
    }
    out, err = capfd.readouterr()
    seen = {
        "Slack Web API calls": json.dumps([c.params for c in bot.fake.calls], default=str),
        "replies": json.dumps([r.body for r in bot.fake.responses], default=str),
        "logs": caplog.text + "".join(r.exc_text or "" for r in caplog.records),
        "output": out + err,
    }
    leaks = [
        (name, where) for where, text in seen.items() for name, s in secrets.items() if s in text
    ]
    assert leaks == []


async def test_healthz_never_shows_the_database_password(sandbox, fake_slack, caplog):
    database = Database(
        "postgresql+psycopg://bot:hunter2-db-secret@127.0.0.1:1/none?connect_timeout=1"
    )
    settings = bot_settings(
        sandbox, fake_slack, database.engine.url.render_as_string(hide_password=False)
    )
    deps = build_deps(settings, db=database, clock=now)
    with LocalServer(build_asgi(deps, build_app(deps)), lifespan="on") as server:
        async with httpx.AsyncClient(timeout=15) as http:
            response = await http.get(server.url + "/healthz")
    assert response.status_code == 503
    assert response.json()["database"].startswith("unavailable")
    assert "hunter2" not in response.text
    assert "hunter2" not in caplog.text


# ---- denial of service ------------------------------------------------------------------------------


async def test_a_slow_atlas_never_delays_the_acknowledgement(bot, sandbox):
    here, other = sandbox.data.org_ids[:2]
    bot.link(here)
    sandbox.state.latency_seconds = 3.5  # every Atlas answer takes longer than Slack waits
    texts = (
        "pending",
        f"costs {months_back(bot, 2)} {months_back(bot, 0)}",
        "digest now",
        f"link {other}",
    )
    for text in texts:
        started = time.monotonic()
        response = await bot.command(text)
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and not response.text, (text, response.text)
        assert elapsed < ACK_SECONDS, f"{text!r} acknowledged after {elapsed:.2f}s"

    # ... and the work is done afterwards: the pending summary, the costs "started" message,
    # the new link's notice, and the digest's ephemeral "preparing".
    def done():
        posts = " ".join(p["text"] for p in bot.fake.calls_to("chat.postMessage"))
        replies = " ".join(str(r.body.get("text")) for r in bot.fake.responses)
        return (
            all(
                needle in posts
                for needle in ("Month-to-date Atlas spend", "Cost Explorer query started", other)
            )
            and "Preparing the" in replies
        )

    await bot.fake.wait_for_async(done, timeout=20)
    assert other in channel_state(bot, CHANNEL)


async def test_work_after_the_acknowledgement_runs_at_most_work_at_once_commands(bot, sandbox):
    org = sandbox.data.org_ids[0]
    bot.link(org)
    bot.fake.delay("chat.postMessage", 2.5)  # each command's work holds its slot this long
    commands = WORK_AT_ONCE + 1
    for _ in range(commands):
        started = time.monotonic()
        response = await bot.command("pending")
        assert response.status_code == 200
        assert time.monotonic() - started < ACK_SECONDS  # a full queue never delays the ack
    await bot.fake.wait_for_async(
        lambda: len(bot.fake.calls_to("chat.postMessage")) >= WORK_AT_ONCE, timeout=10
    )
    await asyncio.sleep(0.5)  # well inside the 2.5 s the first answers take
    assert len(bot.fake.calls_to("chat.postMessage")) == WORK_AT_ONCE
    bot.fake.delay("chat.postMessage", 0)
    await bot.fake.wait_for_async(
        lambda: len(bot.fake.calls_to("chat.postMessage")) == commands, timeout=15
    )
