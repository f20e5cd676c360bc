"""Tests of the fake Slack Web API and the signing driver, driven by the real slack_sdk client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import httpx
import pytest
from aiohttp.test_utils import TestServer
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.fakes.clock import now
from tests.fakes.slack import (
    PROCESSING_SECONDS,
    FakeSlack,
    SlackDriver,
    block_action,
    signature_for,
    view_submission,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake
        assert fake.errors == []


@pytest.fixture
async def client(fake: FakeSlack) -> AsyncIterator[AsyncWebClient]:
    yield AsyncWebClient(base_url=fake.base_url, token="xoxb-test")


# ---- the Web API ------------------------------------------------------------------------------


def test_urls(fake: FakeSlack) -> None:
    assert fake.url.startswith("http://127.0.0.1:")
    assert fake.base_url == fake.url + "api/"
    assert fake.response_url("abc") == fake.url + "response/abc"


async def test_auth_test(fake: FakeSlack, client: AsyncWebClient) -> None:
    answer = await client.auth_test()
    assert answer["user_id"] == "U_BOT"
    assert fake.calls == [("auth.test", {})]


async def test_post_message_then_update_replaces_it(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    first = await client.chat_postMessage(channel="C_LINKED", text="working…")
    second = await client.chat_postMessage(
        channel="C_LINKED", text="hi", blocks=[{"type": "divider"}]
    )
    assert first["ok"] and first["channel"] == "C_LINKED"
    assert abs(float(first["ts"]) - now().timestamp()) < 60  # epoch seconds, like Slack's
    assert len(first["ts"].split(".")[1]) == 6
    assert float(second["ts"]) > float(first["ts"])
    assert second["message"]["blocks"] == [{"type": "divider"}]

    updated = await client.chat_update(channel="C_LINKED", ts=first["ts"], text="done")
    assert updated["ts"] == first["ts"]
    messages = fake.messages("C_LINKED")
    assert list(messages) == [first["ts"], second["ts"]]
    assert messages[first["ts"]]["text"] == "done"
    assert "edited" in messages[first["ts"]]
    assert [p["text"] for p in fake.calls_to("chat.postMessage")] == ["working…", "hi"]
    assert fake.calls_to("chat.update") == [
        {"channel": "C_LINKED", "ts": first["ts"], "text": "done"}
    ]


async def test_update_of_an_unknown_message(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client.chat_update(channel="C_LINKED", ts="1.2", text="x")
    assert caught.value.response["error"] == "message_not_found"


async def test_post_message_needs_text(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as caught, pytest.warns(UserWarning, match="`text`"):
        await client.chat_postMessage(channel="C_LINKED")
    assert caught.value.response["error"] == "no_text"


async def test_a_public_channel_the_bot_is_not_in(fake: FakeSlack, client: AsyncWebClient) -> None:
    """chat:write.public posts there; history and file shares need membership; joining works."""
    fake.add_channel("C_OUT", name="outside", is_member=False)
    posted = await client.chat_postMessage(channel="C_OUT", text="x")
    await client.chat_update(channel="C_OUT", ts=posted["ts"], text="y")
    with pytest.raises(SlackApiError) as caught:
        await client.conversations_history(channel="C_OUT")
    assert caught.value.response["error"] == "not_in_channel"
    with pytest.raises(SlackApiError) as caught:
        await client.files_upload_v2(channel="C_OUT", content=b"a,b", filename="x.csv")
    assert caught.value.response["error"] == "not_in_channel"
    assert (await client.conversations_join(channel="C_OUT"))["channel"]["is_member"] is True
    assert (await client.conversations_history(channel="C_OUT"))["messages"]


async def test_without_chat_write_public_a_post_needs_membership(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.scopes = fake.scopes - {"chat:write.public"}
    fake.add_channel("C_OUT", name="outside", is_member=False)
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="C_OUT", text="x")
    assert caught.value.response["error"] == "not_in_channel"


async def test_a_private_channel_the_bot_is_not_in_does_not_exist_for_it(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.add_channel("G_SECRET", name="secret", is_private=True, is_member=False)
    for call in (
        client.chat_postMessage(channel="G_SECRET", text="x"),
        client.conversations_history(channel="G_SECRET"),
        client.conversations_join(channel="G_SECRET"),
    ):
        with pytest.raises(SlackApiError) as caught:
            await call
        assert caught.value.response["error"] == "channel_not_found"
    fake.add_channel("G_IN", name="in", is_private=True)
    with pytest.raises(SlackApiError) as caught:
        await client.conversations_join(channel="G_IN")
    assert caught.value.response["error"] == "method_not_supported_for_channel_type"


async def test_post_ephemeral(fake: FakeSlack, client: AsyncWebClient) -> None:
    answer = await client.chat_postEphemeral(channel="C_LINKED", user="U_MEMBER", text="only you")
    assert answer["message_ts"]
    assert fake.ephemerals[0]["user"] == "U_MEMBER"
    assert fake.ephemerals[0]["text"] == "only you"
    assert fake.messages("C_LINKED") == {}
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postEphemeral(channel="C_LINKED", user="U_NOBODY", text="x")
    assert caught.value.response["error"] == "user_not_found"


async def test_users_info(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.add_user("U1", is_admin=False, is_owner=True, name="olive")
    user = (await client.users_info(user="U1"))["user"]
    assert (user["id"], user["name"], user["is_owner"], user["is_admin"]) == (
        "U1",
        "olive",
        True,
        False,
    )
    assert (await client.users_info(user="U_ADMIN"))["user"]["is_admin"] is True
    with pytest.raises(SlackApiError) as caught:
        await client.users_info(user="U_UNKNOWN")
    assert caught.value.response["error"] == "user_not_found"
    assert fake.calls_to("users.info")[0] == {"user": "U1"}


async def test_conversations_info(client: AsyncWebClient) -> None:
    channel = (await client.conversations_info(channel="C_LINKED"))["channel"]
    assert channel["name"] == "billing"
    with pytest.raises(SlackApiError) as caught:
        await client.conversations_info(channel="C_NOPE")
    assert caught.value.response["error"] == "channel_not_found"


async def test_views_open(fake: FakeSlack, client: AsyncWebClient) -> None:
    view = {"type": "modal", "callback_id": "connect", "title": {"type": "plain_text", "text": "x"}}
    fake.issue_trigger("1.1.t")
    answer = await client.views_open(trigger_id="1.1.t", view=view)
    assert answer["view"]["callback_id"] == "connect"
    assert answer["view"]["id"].startswith("V")
    assert fake.views[0]["callback_id"] == "connect"


async def test_form_encoded_calls_are_understood(fake: FakeSlack) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            fake.base_url + "chat.postMessage",
            data={
                "channel": "C_LINKED",
                "text": "form",
                "blocks": json.dumps([{"type": "divider"}]),
            },
            headers={"Authorization": "Bearer xoxb-test"},
        )
    assert answer.json()["ok"] is True
    assert answer.json()["message"]["blocks"] == [{"type": "divider"}]


async def test_authentication_is_required(fake: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as caught:
        await AsyncWebClient(base_url=fake.base_url).auth_test()
    assert caught.value.response["error"] == "not_authed"
    async with httpx.AsyncClient() as http:
        missing = await http.post(fake.base_url + "auth.test")
        wrong = await http.post(
            fake.base_url + "auth.test", headers={"Authorization": "Bearer nope"}
        )
    assert missing.json() == {"ok": False, "error": "not_authed"}
    assert wrong.json() == {"ok": False, "error": "invalid_auth"}


async def test_kept_alive_connections_do_not_hold_up_stop() -> None:
    fake = FakeSlack().start()
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(base_url=fake.base_url, token="xoxb-test", session=session)
        for n in range(5):
            await client.chat_postMessage(channel="C_LINKED", text=str(n))
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 1
    assert len(fake.calls) == 5


async def test_unknown_method(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client.api_call("chat.scheduleMessage", json={"channel": "C_LINKED"})
    assert caught.value.response["error"] == "unknown_method"


# ---- files_upload_v2 --------------------------------------------------------------------------


async def test_files_upload_v2_bytes(fake: FakeSlack, client: AsyncWebClient) -> None:
    data = b"Date,Amount\n2024-01-01,12.34\n" * 100
    answer = await client.files_upload_v2(
        channel="C_LINKED",
        file=data,
        filename="invoice.csv",
        title="Invoice 2024-01",
        initial_comment="Here is the CSV",
    )
    assert answer["file"]["name"] == "invoice.csv"
    [upload] = fake.uploads
    assert upload.data == data
    assert upload.length == len(data)
    assert upload.completed
    assert (upload.channel_id, upload.title, upload.initial_comment) == (
        "C_LINKED",
        "Invoice 2024-01",
        "Here is the CSV",
    )
    [complete] = fake.calls_to("files.completeUploadExternal")
    assert complete["channel_id"] == "C_LINKED"
    assert json.loads(complete["files"]) == [{"id": upload.file_id, "title": "Invoice 2024-01"}]
    assert [m.get("subtype") for m in fake.messages("C_LINKED").values()] == ["file_share"]


async def test_files_upload_v2_path(
    fake: FakeSlack, client: AsyncWebClient, tmp_path: Path
) -> None:
    path = tmp_path / "costs.csv"
    path.write_bytes(b"a,b\n1,2\n")
    await client.files_upload_v2(channel="C_LINKED", file=str(path), title="costs")
    [upload] = fake.uploads
    assert (upload.filename, upload.data) == ("costs.csv", b"a,b\n1,2\n")


async def test_upload_failure_surfaces(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next("upload", status=500)
    with pytest.raises(Exception, match="Failed to upload a file"):
        await client.files_upload_v2(channel="C_LINKED", content="x", filename="x.txt")
    assert fake.calls_to("files.completeUploadExternal") == []


async def test_multipart_upload_is_stored(fake: FakeSlack, client: AsyncWebClient) -> None:
    announced = await client.files_getUploadURLExternal(filename="a.bin", length=3)
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            announced["upload_url"], files={"file": ("a.bin", b"\x00\x01\x02")}
        )
    assert answer.status_code == 200
    assert fake.uploads[0].data == b"\x00\x01\x02"


# ---- response_url ------------------------------------------------------------------------------


async def test_response_url_posts_are_recorded(fake: FakeSlack) -> None:
    webhook = AsyncWebhookClient(fake.response_url("cmd-1"))
    answer = await webhook.send(text="in channel", response_type="in_channel")
    assert answer.status_code == 200
    assert fake.responses == [("cmd-1", {"text": "in channel", "response_type": "in_channel"})]


async def test_response_url_fault(fake: FakeSlack) -> None:
    fake.fail_next("response_url", status=404, error="expired_url")
    answer = await AsyncWebhookClient(fake.response_url()).send(text="late")
    assert (answer.status_code, answer.body) == (404, "expired_url")


# ---- faults --------------------------------------------------------------------------------------


async def test_rate_limit_surfaces_as_429(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="C_LINKED", text="x")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "7"
    assert caught.value.response["error"] == "ratelimited"
    # The fault was used up: the next call goes through.
    assert (await client.chat_postMessage(channel="C_LINKED", text="x"))["ok"]


async def test_rate_limit_retried_by_the_sdk_handler(fake: FakeSlack) -> None:
    client = AsyncWebClient(
        base_url=fake.base_url,
        token="xoxb-test",
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    # Retry-After 0 keeps the test quick: the handler waits that long plus under a second.
    fake.fail_next("chat.postMessage", status=429, retry_after=0)
    answer = await client.chat_postMessage(channel="C_LINKED", text="eventually")
    assert answer["ok"]
    assert len(fake.calls_to("chat.postMessage")) == 2
    assert len(fake.messages("C_LINKED")) == 1


async def test_ok_false_error(fake: FakeSlack, client: AsyncWebClient) -> None:
    sent = await client.chat_postMessage(channel="C_LINKED", text="x")
    fake.fail_next("chat.update", error="channel_not_found")
    with pytest.raises(SlackApiError) as caught:
        await client.chat_update(channel="C_LINKED", ts=sent["ts"], text="y")
    assert caught.value.response.status_code == 200
    assert caught.value.response["error"] == "channel_not_found"
    assert fake.messages("C_LINKED")[sent["ts"]]["text"] == "x"


async def test_server_error_times(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next("users.info", status=500, times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as caught:
            await client.users_info(user="U_ADMIN")
        assert caught.value.response.status_code == 500
    assert (await client.users_info(user="U_ADMIN"))["ok"]


async def test_reset(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.add_user("U9")
    fake.fail_next("auth.test", error="x")
    await client.chat_postMessage(channel="C_LINKED", text="x")
    fake.reset()
    assert fake.calls == [] and fake.messages("C_LINKED") == {}
    assert (await client.auth_test())["ok"]
    with pytest.raises(SlackApiError):
        await client.users_info(user="U9")
    assert (await client.users_info(user="U_ADMIN"))["ok"]


async def test_delay_holds_back_the_answer_not_the_work(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.delay("chat.postMessage", 0.5, times=1)
    started = time.monotonic()
    post = asyncio.create_task(client.chat_postMessage(channel="C_LINKED", text="slow"))
    # Recorded and in the channel while the answer is still held back.
    await fake.wait_for_async(lambda: fake.messages("C_LINKED"), timeout=5)
    assert fake.calls_to("chat.postMessage")[0]["text"] == "slow" and not post.done()
    # Other requests are served meanwhile.
    assert (await client.auth_test())["ok"] and not post.done()
    answer = await post
    assert time.monotonic() - started >= 0.5
    assert answer["ts"] in fake.messages("C_LINKED")
    # times=1: the next post answers at once.
    started = time.monotonic()
    await client.chat_postMessage(channel="C_LINKED", text="fast")
    assert time.monotonic() - started < 0.4


async def test_delay_until_removed_and_a_client_that_gives_up(fake: FakeSlack) -> None:
    # slack_sdk annotates `timeout` as int seconds, but aiohttp takes (and this test needs) a float.
    impatient = AsyncWebClient(base_url=fake.base_url, token="xoxb-test", timeout=0.2)  # type: ignore[arg-type]
    fake.delay("users.info", 0.6)
    for _ in range(2):  # no `times`: every call waits
        with pytest.raises((TimeoutError, aiohttp.ClientError)):
            await impatient.users_info(user="U_ADMIN")
    assert len(fake.calls_to("users.info")) == 2
    fake.delay("users.info", 0)
    assert (await impatient.users_info(user="U_ADMIN"))["ok"]
    await asyncio.sleep(0.7)  # the held-back answers go to clients that left: no error
    with pytest.raises(ValueError):
        fake.delay("users.info", -1)


# ---- waiting ------------------------------------------------------------------------------------


def test_wait_for_wakes_on_a_request(fake: FakeSlack) -> None:
    def later() -> None:
        httpx.post(
            fake.base_url + "chat.postMessage",
            json={"channel": "C_LINKED", "text": "from a thread"},
            headers={"Authorization": "Bearer xoxb-test"},
        )

    thread = threading.Thread(target=later)
    thread.start()
    posted = fake.wait_for(lambda: fake.calls_to("chat.postMessage"))
    thread.join()
    assert posted[0]["text"] == "from a thread"


def test_wait_for_times_out(fake: FakeSlack) -> None:
    with pytest.raises(TimeoutError):
        fake.wait_for(lambda: fake.calls_to("chat.postMessage"), timeout=0.05)


async def test_wait_for_async_leaves_the_loop_free(fake: FakeSlack, client: AsyncWebClient) -> None:
    async def later() -> None:
        await asyncio.sleep(0)
        await client.chat_postMessage(channel="C_LINKED", text="same loop")

    task = asyncio.create_task(later())
    posted = await fake.wait_for_async(lambda: fake.calls_to("chat.postMessage"))
    await task
    assert posted[0]["text"] == "same loop"


# ---- the signing driver -----------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in app endpoint that keeps what it was sent."""

    seen: list[tuple[str, dict[str, str], bytes]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def app_server() -> Iterator[tuple[str, list]]:
    seen: list = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("R", (_Recorder,), {"seen": seen}))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


async def test_command_is_signed_and_shaped_like_slack(
    app_server: tuple[str, list], fake: FakeSlack
) -> None:
    origin, seen = app_server
    driver = SlackDriver(origin, SECRET, fake=fake)
    answer = await driver.command("costs 2024-01 2024-02 by services", user_id="U_MEMBER")
    assert answer.status_code == 200
    [(path, headers, body)] = seen
    assert path == "/slack/events"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)
    form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    assert form["command"] == "/atlas-billing"
    assert form["text"] == "costs 2024-01 2024-02 by services"
    assert (form["user_id"], form["channel_id"], form["team_id"]) == ("U_MEMBER", "C_LINKED", "T1")
    assert form["response_url"].startswith(fake.url + "response/")
    for name in ("user_name", "channel_name", "team_domain", "trigger_id", "api_app_id", "token"):
        assert form[name]


def test_signature_options(app_server: tuple[str, list]) -> None:
    origin, seen = app_server
    driver = SlackDriver(origin + "/custom/path", SECRET)
    verifier = SignatureVerifier(SECRET)
    cases: list[tuple[dict[str, bool | str], bool]] = [
        ({}, True),
        ({"stale": True}, False),
        ({"signature": "wrong"}, False),
        ({"signature": "missing"}, False),
    ]
    for options, valid in cases:
        driver.command_sync("help", **options)
        path, headers, body = seen[-1]
        assert path == "/custom/path"
        assert verifier.is_valid_request(body, headers) is valid, options
    assert "X-Slack-Signature" not in seen[-1][1]


def test_signature_matches_slacks_documented_example() -> None:
    # From Slack's "Verifying requests from Slack" guide.
    body = (
        "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        "channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        "command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
        "%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015."
        "47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    assert (
        signature_for(SECRET, 1531420618, body)
        == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )


async def test_actions_are_sent_as_a_payload_field(app_server: tuple[str, list]) -> None:
    origin, seen = app_server
    driver = SlackDriver(origin, SECRET, clock=time.time)
    await driver.action(block_action("refresh", "5f1a2b3c4d5e6f7a8b9c0d1e", message_ts="1.2"))
    await driver.action(view_submission("connect", {"client_id": {"input": "mdb_sa_id"}}))
    verifier = SignatureVerifier(SECRET)
    payloads = []
    for _, headers, body in seen:
        assert verifier.is_valid_request(body, headers)
        [raw] = parse_qs(body.decode())["payload"]
        payloads.append(json.loads(raw))
    assert payloads[0]["type"] == "block_actions"
    assert payloads[0]["actions"][0]["value"] == "5f1a2b3c4d5e6f7a8b9c0d1e"
    assert payloads[1]["view"]["state"]["values"]["client_id"]["input"]["value"] == "mdb_sa_id"


# ---- with a real Bolt app ---------------------------------------------------------------------


@pytest.fixture
async def bolt_url(fake: FakeSlack) -> AsyncIterator[str]:
    app = AsyncApp(
        client=AsyncWebClient(base_url=fake.base_url, token="xoxb-test"),
        signing_secret=SECRET,
    )

    @app.command("/atlas-billing")
    async def echo(ack, respond, client, command) -> None:
        await ack()
        await respond(f"you said {command['text']}")
        await client.chat_postMessage(channel=command["channel_id"], text=command["text"])

    server = TestServer(app.web_app(), host="127.0.0.1", port=0)
    await server.start_server()
    yield str(server.make_url("/slack/events"))
    await server.close()


async def test_bolt_app_end_to_end(fake: FakeSlack, bolt_url: str) -> None:
    driver = SlackDriver(bolt_url, SECRET, fake=fake)
    answer = await driver.command("pending")
    assert answer.status_code == 200
    await fake.wait_for_async(lambda: fake.calls_to("chat.postMessage") and fake.responses)
    assert fake.responses[0].body["text"] == "you said pending"
    assert [m["text"] for m in fake.messages("C_LINKED").values()] == ["pending"]


@pytest.mark.parametrize(
    "options", [{"stale": True}, {"signature": "wrong"}, {"signature": "missing"}]
)
async def test_bolt_refuses_bad_signatures(fake: FakeSlack, bolt_url: str, options: dict) -> None:
    answer = await SlackDriver(bolt_url, SECRET, fake=fake).command("pending", **options)
    assert answer.status_code == 401
    assert fake.calls_to("chat.postMessage") == [] and fake.responses == []


async def test_history_returns_newest_first_with_metadata_on_request(fake):
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(base_url=fake.base_url, token="xoxb-test")
    meta = {"event_type": "atlas_billing", "event_payload": {"key": "alert:1:2026-11:80"}}
    first = await client.chat_postMessage(channel="C_LINKED", text="one", metadata=meta)
    await client.chat_postMessage(channel="C_LINKED", text="two")
    history = await client.conversations_history(channel="C_LINKED", include_all_metadata=True)
    assert [m["text"] for m in history["messages"]] == ["two", "one"]
    assert history["messages"][1]["metadata"] == meta
    plain = await client.conversations_history(channel="C_LINKED", oldest=first["ts"])
    assert [m["text"] for m in plain["messages"]] == ["two"]
    assert "metadata" not in plain["messages"][0]


async def test_a_trigger_opens_a_modal_only_within_3_seconds(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.issue_trigger("1.fresh")
    assert (await client.views_open(trigger_id="1.fresh", view={"type": "modal"}))["ok"]
    fake.issue_trigger("2.old", age=3.5)
    for trigger, error in (("2.old", "expired_trigger_id"), ("3.never", "invalid_trigger_id")):
        with pytest.raises(SlackApiError) as caught:
            await client.views_open(trigger_id=trigger, view={"type": "modal"})
        assert caught.value.response["error"] == error


async def test_views_update_replaces_an_open_view(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.issue_trigger("1.t")
    opened = (await client.views_open(trigger_id="1.t", view={"type": "modal", "blocks": []}))[
        "view"
    ]
    await client.views_update(
        view_id=opened["id"], view={"type": "modal", "blocks": [{"type": "divider"}]}
    )
    [shown] = fake.views
    assert shown["id"] == opened["id"] and shown["blocks"] == [{"type": "divider"}]
    with pytest.raises(SlackApiError) as caught:
        await client.views_update(view_id="V_NONE", view={"type": "modal"})
    assert caught.value.response["error"] == "not_found"


# ---- Block Kit as Slack checks it --------------------------------------------------------------


async def test_blocks_over_slacks_limits_are_refused_whole(fake: FakeSlack, client: AsyncWebClient):
    long_field = {"type": "mrkdwn", "text": "x" * 2001}
    cases: list[list[dict[str, Any]]] = [
        [{"type": "section", "fields": [long_field]}],
        [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}],
        [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}],
        [{"type": "divider"}] * 51,
        [{"type": "image", "image_url": "https://example.com/x.png"}],  # no alt_text
    ]
    for blocks in cases:
        with pytest.raises(SlackApiError) as caught:
            await client.chat_postMessage(channel="C_LINKED", text="t", blocks=blocks)
        assert caught.value.response["error"] == "invalid_blocks", blocks
        assert caught.value.response["errors"]
    assert fake.messages("C_LINKED") == {}
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="C_LINKED", text="x" * 40_001)
    assert caught.value.response["error"] == "msg_too_long"


async def test_a_slack_file_must_be_shared_to_the_channel_and_processed(
    fake: FakeSlack, client: AsyncWebClient
):
    """The digest chart that was lost: uploaded without a channel and referenced at once."""
    unshared = await client.files_upload_v2(content=b"\x89PNG", filename="c.png")
    image = {"type": "image", "alt_text": "chart", "slack_file": {"id": unshared["file"]["id"]}}
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="C_LINKED", text="t", blocks=[image])
    assert "invalid slack file" in str(caught.value.response["errors"])
    shared = await client.files_upload_v2(channel="C_LINKED", content=b"\x89PNG", filename="c.png")
    image["slack_file"] = {"id": shared["file"]["id"]}
    with pytest.raises(SlackApiError):  # shared, but not processed yet
        await client.chat_postMessage(channel="C_LINKED", text="t", blocks=[image])
    await asyncio.sleep(PROCESSING_SECONDS)
    assert (await client.chat_postMessage(channel="C_LINKED", text="t", blocks=[image]))["ok"]
    with pytest.raises(SlackApiError):  # not shared in that channel
        await client.chat_postMessage(channel="C_OTHER", text="t", blocks=[image])


async def test_a_response_url_takes_five_posts_within_30_minutes(fake: FakeSlack) -> None:
    url = fake.response_url("cmd")
    async with httpx.AsyncClient() as http:
        answers = [(await http.post(url, json={"text": str(n)})).status_code for n in range(6)]
        assert answers == [200] * 5 + [404]
        old = fake.response_url("old", age=31 * 60)
        late = await http.post(old, json={"text": "late"})
    assert (late.status_code, late.text) == (404, "expired_url")
    assert [r.body["text"] for r in fake.responses] == ["0", "1", "2", "3", "4"]
