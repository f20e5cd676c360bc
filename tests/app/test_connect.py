"""``connect ORG_ID`` end to end: the modal, its submission tried on the sandbox Atlas, the
credentials stored encrypted and then used for the org; and no secret in the database file,
the logs or anything sent to Slack."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, text

from bot.core.secrets import SecretBox
from bot.render.credentials import CALLBACK_ID
from storage import audit, credentials
from tests.app.conftest import CHANNEL, OTHER_CHANNEL, TEAM
from tests.app.helpers import eventually
from tests.fakes.slack import view_submission

PENDING = "listInvoicePending"
LIST = "listInvoices"
TOKEN_PATH = "/api/oauth/token"


@pytest.fixture(autouse=True)
def _working_directory(tmp_path, monkeypatch):
    # Without BOT_SECRET_KEY the bot generates its key next to a SQLite file, and into the
    # working directory for PostgreSQL: keep that in the test's own directory.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def org_id(sandbox) -> str:
    return sandbox.data.org_ids[0]


@pytest.fixture
def creds(sandbox):
    return sandbox.data.credentials


async def open_modal(bot, org_id: str, **options) -> dict:
    """`connect`: the modal opens at once, then becomes the form (or says why not)."""
    before = len(bot.fake.view_updates)
    response = await bot.command(f"connect {org_id}", **options)
    assert response.status_code == 200 and not response.text
    updates = await bot.fake.wait_for_async(
        lambda: len(bot.fake.view_updates) > before and bot.fake.view_updates
    )
    return updates[-1]


async def submit(bot, view: dict, kind: str, public_id: str, secret: str, user="U_ADMIN") -> dict:
    payload = view_submission(
        CALLBACK_ID,
        {
            "kind": {"value": {"type": "radio_buttons", "selected_option": {"value": kind}}},
            "public_id": {"value": public_id},
            "secret": {"value": secret},
        },
        private_metadata=view["private_metadata"],
        user_id=user,
        view_id=view["id"],
    )
    response = await bot.driver.action(payload)
    assert response.status_code == 200, response.text
    return response.json() if response.text else {}


async def outcome(bot, view: dict, answer: dict) -> dict:
    """The submission was answered "checking…"; what the modal shows once Atlas was asked."""
    assert answer["response_action"] == "update", answer
    assert "Trying these credentials" in json.dumps(answer["view"])
    before = len(bot.fake.view_updates)
    updates = await bot.fake.wait_for_async(
        lambda: [u for u in bot.fake.view_updates[before:] if u["id"] == view["id"]], timeout=30
    )
    return updates[-1]


def shown(view: dict) -> str:
    return json.dumps(view["blocks"])


async def connected(bot, view: dict, answer: dict) -> dict:
    result = await outcome(bot, view, answer)
    assert "Connected" in shown(result) and "callback_id" not in result, result
    return result


def stored(bot, org_id: str):
    with bot.db.session() as session:
        return credentials.get_credential(session, org_id=org_id)


def connect_audit(bot) -> list:
    with bot.db.session() as session:
        return audit.entries(session, action="connect")


async def confirmation(bot) -> dict:
    [posted] = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    return posted


def everything_stored(bot) -> bytes:
    """The database as an attacker with the file (or a dump) would see it."""
    url = bot.db.engine.url
    if url.get_backend_name() == "sqlite":
        path = Path(url.database)
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))
    dump = []
    with bot.db.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            dump += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    return "\n".join(dump).encode()


def assert_nowhere(secret: str, bot, caplog, capfd, *extra: str) -> None:
    """Not in the database, the logs, the bot's output, nor anything sent to Slack."""
    assert secret.encode() not in everything_stored(bot)
    for record in caplog.records:
        assert secret not in record.getMessage(), record.name
        assert secret not in (record.exc_text or "")
    out, err = capfd.readouterr()
    assert secret not in out + err
    assert secret not in json.dumps([call.params for call in bot.fake.calls], default=str)
    assert secret not in json.dumps([r.body for r in bot.fake.responses], default=str)
    for text_ in extra:
        assert secret not in text_


# ---- the modal --------------------------------------------------------------------------------


async def test_connect_opens_the_modal_with_where_to_report(bot, org_id):
    view = await open_modal(bot, org_id, trigger_id="42.42.trigger")
    [call] = bot.fake.calls_to("views.open")
    assert call["trigger_id"] == "42.42.trigger"
    assert view["callback_id"] == CALLBACK_ID and view["type"] == "modal"
    assert json.loads(view["private_metadata"]) == {
        "org_id": org_id,
        "team_id": TEAM,
        "channel_id": CHANNEL,
    }
    inputs = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
    assert inputs["kind"]["type"] == "radio_buttons"
    assert [o["value"] for o in inputs["kind"]["options"]] == ["service_account", "api_key"]
    assert inputs["public_id"]["type"] == inputs["secret"]["type"] == "plain_text_input"
    assert bot.atlas_requests() == []


async def test_the_modal_opens_before_anything_slow_within_the_triggers_3_seconds(bot, org_id):
    """bolt-python #772: the trigger expires 3 s after Slack sends it; a slow users.info (the
    admin check) must not come first."""
    bot.fake.delay("users.info", 3.5, times=1)
    view = await open_modal(bot, org_id)
    assert view["callback_id"] == CALLBACK_ID
    first, second = [c.method for c in bot.fake.calls if c.method.startswith(("views", "users"))][
        :2
    ]
    assert (first, second) == ("views.open", "users.info")


async def test_non_admins_cannot_open_it(bot, org_id):
    await bot.command(f"connect {org_id}", user_id="U_MEMBER")
    responses = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    assert "Only workspace admins" in responses[-1].body["text"]
    [view] = bot.fake.views  # opened at once, then saying why not: never the form
    assert "Only workspace admins" in shown(view) and "callback_id" not in view
    assert bot.atlas_requests() == []


async def test_only_a_channel_following_the_org_may_connect_it_once_it_is_linked(bot, org_id):
    # Linked elsewhere only: this channel may not replace the credentials every follower uses.
    bot.link(org_id, channel=OTHER_CHANNEL)
    await bot.command(f"connect {org_id}")
    responses = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    assert "followed by other channels" in responses[-1].body["text"]
    [refused] = bot.fake.views
    assert "followed by other channels" in shown(refused) and "callback_id" not in refused
    # A channel that follows it may.
    bot.link(org_id)
    view = await open_modal(bot, org_id)
    assert json.loads(view["private_metadata"])["channel_id"] == CHANNEL


# ---- storing and using --------------------------------------------------------------------------


async def test_an_api_key_is_tried_stored_encrypted_and_then_used_for_the_org(
    bot, org_id, creds, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    view = await open_modal(bot, org_id)
    answer = await submit(bot, view, "api_key", creds.public_key, creds.private_key)
    await connected(bot, view, answer)
    # Tried with the cheapest billing read: one invoice of the list, not the pending invoice.
    [tried] = [r for r in bot.sandbox.state.requests_for(LIST, org_id) if r.status == 200]
    assert tried.query["itemsPerPage"] == "1"
    assert bot.sandbox.state.requests_for(PENDING, org_id) == []

    row = stored(bot, org_id)
    assert (row.kind, row.public_id, row.version) == ("api_key", creds.public_key, 1)
    box = bot.deps.credentials.box()
    assert row.key_id == box.key_id and box.decrypt(row.ciphertext) == creds.private_key
    posted = await confirmation(bot)
    assert posted["channel"] == CHANNEL
    assert org_id in posted["text"] and creds.public_key in posted["text"]
    [entry] = connect_audit(bot)
    assert (entry.user_id, entry.channel_id) == ("U_ADMIN", CHANNEL)
    assert entry.details() == {
        "org_id": org_id,
        "kind": "api_key",
        "public_id": creds.public_key,
        "version": 1,
    }

    # The org's Atlas calls now authenticate with the stored key pair (Digest), not the
    # configured service account (Bearer).
    bot.link(org_id)
    bot.sandbox.state.requests.clear()
    await bot.command(f"pending {org_id}")
    await bot.fake.wait_for_async(lambda: len(bot.fake.calls_to("chat.postMessage")) == 2)
    requests = bot.sandbox.state.requests_for(PENDING, org_id)
    assert requests and requests[-1].status == 200
    assert requests[-1].headers["authorization"].startswith("Digest ")
    assert f'username="{creds.public_key}"' in requests[-1].headers["authorization"]
    assert not [r for r in bot.sandbox.state.requests if r.path == TOKEN_PATH]

    assert_nowhere(creds.private_key, bot, caplog, capfd, posted["text"], entry.detail)
    assert "Traceback" not in caplog.text


async def test_a_service_account_is_stored_and_replacing_credentials_takes_effect(
    bot, org_id, creds, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    view = await open_modal(bot, org_id)
    await connected(
        bot, view, await submit(bot, view, "api_key", creds.public_key, creds.private_key)
    )
    await confirmation(bot)
    bot.link(org_id)
    await bot.command(f"pending {org_id}")
    await bot.fake.wait_for_async(lambda: len(bot.fake.calls_to("chat.postMessage")) == 2)

    # Connect again, with the service account: the modal says what it replaces.
    view = await open_modal(bot, org_id)
    assert creds.public_key in json.dumps(view["blocks"])
    answer = await submit(bot, view, "service_account", creds.client_id, creds.client_secret)
    await connected(bot, view, answer)
    row = stored(bot, org_id)
    assert (row.kind, row.public_id, row.version) == ("service_account", creds.client_id, 2)
    posted = await bot.fake.wait_for_async(
        lambda: [m for m in bot.fake.calls_to("chat.postMessage") if "replaced" in m["text"]]
    )
    assert creds.client_id in posted[0]["text"]

    bot.sandbox.state.requests.clear()
    await bot.command(f"pending {org_id}")
    await bot.fake.wait_for_async(lambda: len(bot.fake.calls_to("chat.postMessage")) == 4)
    [request] = bot.sandbox.state.requests_for(PENDING, org_id)
    assert request.headers["authorization"].startswith("Bearer ")
    tokens = [r for r in bot.sandbox.state.requests if r.path == TOKEN_PATH]
    assert len(tokens) == 1  # the new version's own client fetched its token
    # The replaced version's client is closed and dropped: only version 2's is kept.
    assert bot.deps.credentials.cached() == {org_id: (row.id, 2)}

    for secret in (creds.client_secret, creds.private_key):
        assert_nowhere(secret, bot, caplog, capfd, posted[0]["text"])


async def test_another_replica_decrypts_them_and_uses_them_for_every_operation(
    bot, org_id, creds, sandbox
):
    view = await open_modal(bot, org_id)
    await connected(
        bot, view, await submit(bot, view, "api_key", creds.public_key, creds.private_key)
    )
    replica = bot.replica()  # its own Deps: reads the same key file and database
    try:
        atlas = await replica.credentials.client(org_id)
        invoice_id = sandbox.data.org(org_id).latest_closed.id
        sandbox.state.requests.clear()
        assert await atlas.pending_totals(org_id)
        assert (await atlas.invoice(org_id, invoice_id)).id == invoice_id
        async with atlas.invoice_csv(org_id, invoice_id) as chunks:
            assert b"".join([chunk async for chunk in chunks])
        answered = [r for r in sandbox.state.requests if r.status != 401]
        assert len(answered) == 3
        assert all(f'username="{creds.public_key}"' in r.headers["authorization"] for r in answered)
        # The org's client is the replica's own pool with other credentials: closing it
        # leaves the configured client working.
        await atlas.aclose()
        assert await replica.atlas.pending_totals(org_id)
    finally:
        await replica.aclose()


# ---- refusals: nothing stored -------------------------------------------------------------------


async def test_wrong_credentials_are_refused_on_the_secret_field(bot, org_id, creds, caplog):
    caplog.set_level(logging.DEBUG)
    view = await open_modal(bot, org_id)
    wrong = "01234567-89ab-4def-8123-456789abcdef"
    again = await outcome(bot, view, await submit(bot, view, "api_key", creds.public_key, wrong))
    # The form again, saying why, with what was typed but the secret.
    assert again["callback_id"] == CALLBACK_ID
    assert "Atlas refused these credentials (401)" in shown(again)
    assert creds.public_key in shown(again) and wrong not in json.dumps(again)
    answer = await submit(bot, again, "service_account", creds.client_id, "mdb_sa_sk_" + "0" * 40)
    assert "Atlas refused these credentials" in shown(await outcome(bot, again, answer))
    assert stored(bot, org_id) is None
    assert connect_audit(bot) == []
    assert bot.fake.calls_to("chat.postMessage") == []
    assert wrong not in caplog.text


async def test_a_key_without_the_billing_role_is_refused_on_the_id_field(bot, org_id, creds):
    view = await open_modal(bot, org_id)
    answer = await submit(bot, view, "api_key", creds.no_role_public_key, creds.no_role_private_key)
    assert "Organization Billing Viewer" in shown(await outcome(bot, view, answer))
    assert stored(bot, org_id) is None


@pytest.mark.parametrize(
    ("kind", "public_id", "secret", "field", "needle"),
    [
        ("api_key", "", "01234567-89ab-4def-8123-456789abcdef", "public_id", "Enter the API"),
        ("api_key", "ABCDEFGH", "01234567-89ab-4def-8123-456789abcdef", "public_id", "8 lowercase"),
        ("api_key", "abcdefgh", "not-a-uuid; DROP TABLE", "secret", "UUID"),
        ("api_key", "mdb_sa_id_" + "a" * 24, "x" * 20, "public_id", "Service account"),
        ("service_account", "abcdefgh", "x" * 20, "public_id", "API key pair"),
        ("service_account", "mdb_sa_id_xyz", "x" * 20, "public_id", "24 hex digits"),
        ("service_account", "mdb_sa_id_" + "a" * 24, "short", "secret", "16 to 256"),
        ("service_account", "mdb_sa_id_" + "a" * 24, "has blanks in it!", "secret", "16 to 256"),
        ("password", "abcdefgh", "x" * 20, "kind", "Choose"),
    ],
)
async def test_malformed_input_is_refused_without_asking_atlas(
    bot, org_id, kind, public_id, secret, field, needle
):
    view = await open_modal(bot, org_id)
    answer = await submit(bot, view, kind, public_id, secret)
    assert answer["response_action"] == "errors"
    assert needle in answer["errors"][field]
    assert secret not in json.dumps(answer)
    assert bot.atlas_requests() == []
    assert stored(bot, org_id) is None


async def test_a_non_admin_submission_is_refused(bot, org_id, creds):
    view = await open_modal(bot, org_id)
    answer = await submit(
        bot, view, "api_key", creds.public_key, creds.private_key, user="U_MEMBER"
    )
    assert "Only workspace admins" in answer["errors"]["public_id"]
    assert bot.atlas_requests() == []
    assert stored(bot, org_id) is None


async def test_a_form_from_another_workspace_is_refused(bot, org_id, creds):
    view = await open_modal(bot, org_id)
    forged = dict(view, private_metadata=json.dumps({"org_id": org_id, "team_id": "T_OTHER"}))
    answer = await submit(bot, forged, "api_key", creds.public_key, creds.private_key)
    assert "out of date" in answer["errors"]["public_id"]
    assert stored(bot, org_id) is None


async def test_atlas_too_slow_stores_nothing_and_says_so(bot, org_id, creds, monkeypatch):
    monkeypatch.setattr("bot.services.credentials.CHECK_SECONDS", 1.0)
    view = await open_modal(bot, org_id)
    bot.sandbox.state.latency_seconds = 2
    answer = await submit(bot, view, "api_key", creds.public_key, creds.private_key)
    assert "did not answer within" in shown(await outcome(bot, view, answer))
    assert stored(bot, org_id) is None
    # The sandbox answers the abandoned request a second later: let it, so that its log
    # entry lands in this test and not in the next one's.
    await eventually(lambda: bot.sandbox.state.requests_for(LIST, org_id), timeout=10)


# ---- the wrong key --------------------------------------------------------------------------------


async def test_credentials_under_another_key_give_a_clear_error_not_a_traceback(
    bot, org_id, creds, caplog
):
    caplog.set_level(logging.DEBUG)
    other = SecretBox(Fernet.generate_key().decode())
    with bot.db.session() as session:
        credentials.set_credential(
            session,
            org_id=org_id,
            kind="api_key",
            public_id=creds.public_key,
            ciphertext=other.encrypt(creds.private_key),
            key_id=other.key_id,
            updated_by="U_ADMIN",
        )
    bot.link(org_id)
    await bot.command(f"pending {org_id}")
    responses = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    reply = responses[-1].body["text"]
    assert f"The stored Atlas credentials of org {org_id} cannot be used" in reply
    assert "set BOT_SECRET_KEY to the key they were stored with" in reply
    assert bot.sandbox.state.requests_for(PENDING, org_id) == []
    assert "Traceback" not in caplog.text
    assert creds.private_key not in caplog.text + reply


async def test_a_submission_by_an_admin_of_another_organisation_is_refused(bot, org_id, creds):
    """Slack Connect: a partner's owner, in a shared channel, cannot replace this org's keys."""
    bot.fake.add_user("U_PARTNER", team_id="T_PARTNER", is_admin=True, is_owner=True)
    view = await open_modal(bot, org_id)
    answer = await submit(
        bot, view, "api_key", creds.public_key, creds.private_key, user="U_PARTNER"
    )
    assert "another organization" in answer["errors"]["public_id"]
    assert bot.atlas_requests() == []
    assert stored(bot, org_id) is None


async def test_a_slow_admin_check_at_submission_is_a_try_again_not_a_late_answer(
    bot, org_id, creds
):
    """Slack shows an error when a submission is not answered within 3 s: a users.info that
    hangs is cut short and the form says to try again, with nothing stored."""
    view = await open_modal(bot, org_id)
    bot.fake.delay("users.info", 4, times=1)
    answer = await submit(bot, view, "api_key", creds.public_key, creds.private_key)
    assert answer["response_action"] == "errors"
    assert "Slack did not answer" in answer["errors"]["public_id"]
    assert bot.atlas_requests() == [] and stored(bot, org_id) is None
