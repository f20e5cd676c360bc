"""Signed requests that are not what Slack sends get 400 (413 when too big) from the server layer:
nothing stored, nothing sent to Slack or Atlas. Signatures are still checked first (401), and
Bolt's own answers (URL verification, SSL check) still work."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from urllib.parse import urlencode

from sqlalchemy import func, inspect, select, table

from bot.slack.guard import MAX_BODY_BYTES
from tests.app.conftest import CHANNEL, SECRET, Bot
from tests.fakes.slack import block_action, view_submission

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
ORG = "5f1a2b3c4d5e6f7a8b9c0d1e"


def sign(body: bytes, *, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


async def post(bot, body: bytes | str, *, content_type: str | None = FORM, **headers):
    """POST `body` signed like Slack signs it; `headers` are added last."""
    raw = body.encode() if isinstance(body, str) else body
    sent = {"Content-Type": content_type} if content_type else {}
    sent.update(sign(raw))
    sent.update(headers)
    return await bot.driver.client.post(bot.driver.url, content=raw, headers=sent)


def row_counts(bot) -> dict[str, int]:
    names = [n for n in inspect(bot.db.engine).get_table_names() if n != "alembic_version"]
    with bot.db.engine.connect() as connection:
        return {
            n: connection.execute(select(func.count()).select_from(table(n))).scalar_one()
            for n in names
        }


def assert_untouched(bot, before: dict[str, int]) -> None:
    assert row_counts(bot) == before
    assert bot.fake.calls == []
    assert bot.fake.responses == []
    assert list(bot.sandbox.state.requests) == []


def command(bot, **changes: str | None) -> dict[str, str]:
    """An admin's `link` (it would store a link and call Atlas), changed; None removes a field."""
    form = bot.driver.command_body(f"link {ORG}", user_id="U_ADMIN", channel_id=CHANNEL)
    for name, value in changes.items():
        if value is None:
            form.pop(name)
        else:
            form[name] = value
    return form


def payload(value: object) -> str:
    return urlencode({"payload": value if isinstance(value, str) else json.dumps(value)})


def click(**changes) -> dict:
    action = block_action("alert_ack", "1", message_ts="1700000000.000100")
    action.update(changes)
    return {k: v for k, v in action.items() if v is not None}


FIELDS = ("command", "text", "user_id", "channel_id", "team_id", "response_url", "trigger_id")


def _command_without(name: str) -> Callable[[Bot], str]:
    """The "command without NAME" case: a command body lacking that field."""
    return lambda bot: urlencode(command(bot, **{name: None}))


MALFORMED: dict[str, Callable[[Bot], str]] = {
    **{f"command without {name}": _command_without(name) for name in FIELDS},
    "blank user_id": lambda bot: urlencode(command(bot, user_id="")),
    "user_id with a path": lambda bot: urlencode(command(bot, user_id="U1/../U2")),
    "lower-case channel_id": lambda bot: urlencode(command(bot, channel_id="c_linked")),
    "overlong team_id": lambda bot: urlencode(command(bot, team_id="T" * 200)),
    "response_url not http": lambda bot: urlencode(
        command(bot, response_url="javascript:alert(1)")
    ),
    "command without its slash": lambda bot: urlencode(command(bot, command="atlas-billing")),
    "text given twice": lambda bot: urlencode(command(bot)) + "&text=help",
    "a field without a name": lambda bot: urlencode(command(bot)) + "&=x",
    "not form-encoded": lambda bot: "link " + ORG,
    "an empty field": lambda bot: urlencode(command(bot)) + "&&x=1",
    "no command, no payload": lambda bot: "team_id=T1&user_id=U_ADMIN",
    "empty body": lambda bot: "",
    "payload not JSON": lambda bot: payload("{'type': 'block_actions'"),
    "payload a list": lambda bot: payload([click()]),
    "payload a string": lambda bot: payload('"block_actions"'),
    "payload null": lambda bot: payload("null"),
    "payload and other fields": lambda bot: payload(click()) + "&command=%2Fatlas-billing",
    "block action without actions": lambda bot: payload(click(actions=None)),
    "block action with no action": lambda bot: payload(click(actions=[])),
    "action not an object": lambda bot: payload(click(actions=["alert_ack"])),
    "action without action_id": lambda bot: payload(click(actions=[{"value": "1"}])),
    "block action without user": lambda bot: payload(click(user=None)),
    "block action without team": lambda bot: payload(click(team=None)),
    "channel not an object": lambda bot: payload(click(channel="C_LINKED")),
    "unknown type": lambda bot: payload(click(type="zzz")),
    "shortcut (not enabled)": lambda bot: payload(click(type="shortcut", callback_id="x")),
    "no type": lambda bot: payload(click(type=None)),
    "view_submission without view": lambda bot: payload(
        {**view_submission("connect_org", {}), "view": None}
    ),
    "view_submission without state": lambda bot: payload(
        {**view_submission("connect_org", {}), "view": {"callback_id": "connect_org"}}
    ),
}


JSON_BODIES = {
    "a list": "[1]",
    "a string": '"url_verification"',
    "not JSON": "{type: url_verification}",
    "no type": "{}",
    "unknown type": '{"type": "zzz"}',
    "url_verification without challenge": '{"type": "url_verification"}',
    "event_callback without event": '{"type": "event_callback", "event_id": "Ev1", "team_id": "T1"}',
    "event_callback without event_id": '{"type": "event_callback", "event": {"type": "x"}, "team_id": "T1"}',
    **{
        f"event with {where} {value}": json.dumps(
            {
                "type": "event_callback",
                "event_id": "Ev1",
                "team_id": "T1",
                "event": {"type": "channel_archive", **nest({name: value})},
            }
        )
        for name, value in (("channel", 42), ("user", 7), ("channel", True))
        for where, nest in (
            (f"a {name} that is", lambda d: d),
            (f"an item.{name} that is", lambda d: {"item": d}),
        )
    },
}

# (body or None for a well-formed command, content type, extra headers)
MISLABELLED = {
    "raw bytes not UTF-8": (b"text=\xff\xfe&command=%2Fatlas-billing", FORM, {}),
    "percent-encoded bytes not UTF-8": ("text=%ff", FORM, {}),
    "JSON sent as a form": ("{}", FORM, {}),
    "a command as text/plain": (None, "text/plain", {}),
    "a command without a content type": (None, None, {}),
    "a command as multipart": (None, "multipart/form-data; boundary=x", {}),
    "a retry number that is not a number": (None, FORM, {"X-Slack-Retry-Num": "one"}),
}


async def expect(bot, cases: dict, send, status: int) -> None:
    """Every case gets `status` and leaves everything as it was; all failures reported at once."""
    before = row_counts(bot)
    failures = []
    for name, case in cases.items():
        response = await send(case)
        if response.status_code != status:
            failures.append(f"{name}: {response.status_code} {response.text[:200]}")
        elif status != 401 and not response.json().get("error"):
            failures.append(f"{name}: no reason given")
        if row_counts(bot) != before or bot.fake.calls or bot.sandbox.state.requests:
            failures.append(f"{name}: changed something")
    assert not failures, "\n".join(failures)
    assert_untouched(bot, before)


async def test_malformed_signed_requests_get_400_and_change_nothing(bot):
    await expect(bot, MALFORMED, lambda build: post(bot, build(bot)), 400)
    await expect(bot, JSON_BODIES, lambda body: post(bot, body, content_type=JSON), 400)

    async def mislabelled(case):
        body, content_type, headers = case
        body = body if body is not None else urlencode(command(bot))
        return await post(bot, body, content_type=content_type, **headers)

    await expect(bot, MISLABELLED, mislabelled, 400)


async def test_an_oversized_body_gets_413_and_one_just_under_the_limit_is_taken(bot):
    big = urlencode(command(bot, text="help " + "x" * MAX_BODY_BYTES)).encode()

    async def chunks():
        for at in range(0, len(big), 16 * 1024):
            yield big[at : at + 16 * 1024]

    async def send(how):
        if how == "with Content-Length":
            return await post(bot, big)
        if how == "chunked, without Content-Length":
            return await bot.driver.client.post(
                bot.driver.url, content=chunks(), headers={"Content-Type": FORM, **sign(big)}
            )
        # A signature that does not match is not worth hashing a large body for.
        headers = {**sign(b"something else"), "Content-Type": FORM}
        return await bot.driver.client.post(bot.driver.url, content=big, headers=headers)

    cases = ["with Content-Length", "chunked, without Content-Length", "forged"]
    await expect(bot, {name: name for name in cases}, send, 413)

    form = command(bot, text="help")
    form["text"] = "help " + "x" * (MAX_BODY_BYTES - len(urlencode(form)) - 100)
    body = urlencode(form)
    assert MAX_BODY_BYTES - 200 < len(body) <= MAX_BODY_BYTES
    response = await post(bot, body)
    assert response.status_code == 200
    assert "too long" in response.json()["text"]


BAD_SIGNATURES = {
    "unsigned": {},
    "no signature": {"X-Slack-Request-Timestamp": str(int(time.time()))},
    "no timestamp": {"X-Slack-Signature": "v0=00"},
    "text timestamp": {"X-Slack-Request-Timestamp": "not-a-number", "X-Slack-Signature": "v0=00"},
    "fullwidth timestamp": {
        "X-Slack-Request-Timestamp": "１７００".encode(),
        "X-Slack-Signature": "v0=00",
    },
    "negative timestamp": {"X-Slack-Request-Timestamp": "-1", "X-Slack-Signature": "v0=00"},
    "huge timestamp": {"X-Slack-Request-Timestamp": "1" * 40, "X-Slack-Signature": "v0=00"},
    "stale": "stale",
    "future": "future",
    "wrong secret": "wrong",
    "non-ASCII signature": {
        "X-Slack-Request-Timestamp": str(int(time.time())),
        "X-Slack-Signature": "v0=é".encode("latin-1"),
    },
}


async def test_the_signature_is_checked_first(bot):
    bodies = {
        "command": urlencode(command(bot)),
        "garbage": "garbage",
        "malformed payload": payload(click(actions=None)),
    }
    for body in bodies.values():
        raw = body.encode()

        async def send(headers, raw=raw):
            if isinstance(headers, str):
                offset = {"stale": -6 * 60, "future": 6 * 60, "wrong": 0}[headers]
                secret = SECRET + "-x" if headers == "wrong" else SECRET
                headers = sign(raw, timestamp=int(time.time()) + offset, secret=secret)
            return await bot.driver.client.post(
                bot.driver.url, content=raw, headers={"Content-Type": FORM, **headers}
            )

        await expect(bot, BAD_SIGNATURES, send, 401)
    # The timestamp needs no body, so an oversized request with a bad one is not read either.
    oversized = b"x" * (MAX_BODY_BYTES + 1)
    for name in ("unsigned", "no signature", "text timestamp", "huge timestamp"):
        response = await bot.driver.client.post(
            bot.driver.url, content=oversized, headers=BAD_SIGNATURES[name]
        )
        assert response.status_code == 401, name


# ---- what must still get through ----------------------------------------------------------------


async def test_url_verification_and_ssl_check_still_answered_by_bolt(bot):
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    body = json.dumps({"token": "x", "challenge": challenge, "type": "url_verification"})
    response = await post(bot, body, content_type=JSON)
    assert response.status_code == 200 and response.json() == {"challenge": challenge}
    response = await post(bot, "ssl_check=1&token=fake-verification-token")
    assert response.status_code == 200 and response.content == b""


async def test_commands_mentioning_payload_reach_the_command(bot):
    # Bolt's own parser takes any form body containing "payload" for an interaction and
    # dispatches an empty request (404): the server hands Bolt the payload it checked instead.
    response = await post(bot, urlencode(command(bot, text="help payload")))
    assert response.status_code == 200, response.text
    assert "Unknown sub-command 'payload'" in response.json()["text"]
    for changes in ({"channel_name": "payload-alerts"}, {"user_name": "payload"}):
        form = command(bot, text="status", **changes)
        key = form["response_url"].rsplit("/", 1)[1]
        response = await post(bot, urlencode(form))
        assert response.status_code == 200, response.text
        [reply] = await bot.fake.wait_for_async(
            lambda key=key: [r for r in bot.fake.responses if r.key == key]
        )
        assert "not linked" in reply.body["text"]
