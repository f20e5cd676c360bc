"""`bot.slack.guard` on its own: any body is a checked payload or a 400, the retry memory forgets
on time, and a first delivery that failed is processed when Slack retries it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_bolt import BoltResponse
from starlette.applications import Starlette
from starlette.routing import Route

from bot.slack.guard import (
    FORM,
    JSON,
    REMEMBER_SECONDS,
    Payload,
    RecentRequests,
    Rejected,
    SlackGuard,
    read_payload,
    verify_signature,
)
from tests.fakes.slack import block_action
from tests.hostile.strategies import TRICKS

SECRET = "unit-secret"
PURE = settings(
    max_examples=2_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

COMMAND = {
    "token": "t",
    "team_id": "T1",
    "team_domain": "fake",
    "channel_id": "C1",
    "channel_name": "billing",
    "user_id": "U1",
    "user_name": "alice",
    "command": "/atlas-billing",
    "text": "pending",
    "api_app_id": "A1",
    "is_enterprise_install": "false",
    "response_url": "https://hooks.slack.com/commands/T1/1/x",
    "trigger_id": "1.1.x",
}

odd_text = st.one_of(st.text(max_size=40), st.sampled_from(TRICKS), st.just(""))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
content_types = st.sampled_from(
    [FORM, JSON, f"{FORM}; charset=utf-8", "APPLICATION/JSON", "text/plain", "", "multipart/x"]
)


@st.composite
def mutated_commands(draw) -> bytes:
    form = dict(COMMAND)
    for name in draw(st.lists(st.sampled_from(sorted(COMMAND)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del form[name]
        else:
            form[name] = draw(odd_text)
    return urlencode(form).encode()


@st.composite
def mutated_payloads(draw) -> bytes:
    payload = block_action("alert_ack", "1", message_ts="1.2")
    for name in draw(st.lists(st.sampled_from(sorted(payload)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del payload[name]
        else:
            payload[name] = draw(json_values)
    return urlencode({"payload": json.dumps(payload)}).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(odd_text, odd_text, max_size=5).map(lambda d: urlencode(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: urlencode({"payload": json.dumps(v)}).encode()),
    mutated_commands(),
    mutated_payloads(),
)


@PURE
@given(body=bodies, content_type=content_types)
def test_any_body_is_a_checked_payload_or_a_400(body, content_type):
    try:
        payload = read_payload(body, content_type)
    except Rejected as rejected:
        assert rejected.status == 400 and rejected.reason
        return
    assert isinstance(payload, Payload) and isinstance(payload.body, dict)
    if payload.kind == "command":
        for name in ("command", "text", "user_id", "channel_id", "team_id", "response_url"):
            assert isinstance(payload.body[name], str)
        assert payload.body["response_url"].startswith(("https://", "http://"))
    elif payload.kind == "interaction":
        assert payload.body["type"] in ("block_actions", "view_submission")
        assert isinstance(payload.body["user"]["id"], str)
        if payload.body["type"] == "block_actions":
            assert payload.body["actions"]
            assert all(isinstance(a["action_id"], str) for a in payload.body["actions"])
    else:
        assert payload.kind in ("ssl_check", "url_verification", "event")


def test_the_well_formed_ones_are_taken():
    assert read_payload(urlencode(COMMAND).encode(), FORM).kind == "command"
    click = urlencode({"payload": json.dumps(block_action("a", "1"))}).encode()
    assert read_payload(click, FORM).kind == "interaction"
    assert read_payload(b"ssl_check=1&token=x", FORM).kind == "ssl_check"
    verification = json.dumps({"type": "url_verification", "challenge": "c"}).encode()
    assert read_payload(verification, JSON).key is None


@settings(PURE, max_examples=500)
@given(
    timestamp=st.binary(max_size=20)
    | st.integers(-(10**20), 10**20).map(lambda n: str(n).encode()),
    signature=st.binary(max_size=80),
)
def test_odd_signature_headers_are_401_not_errors(timestamp, signature):
    with pytest.raises(Rejected) as rejected:
        verify_signature(SECRET, b"body", timestamp, signature, now=time.time())
    assert rejected.value.status == 401


# ---- the retry memory ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_remembered_for_ten_minutes():
    clock = Clock()
    recent = RecentRequests(clock=clock)
    recent.add(b"a")
    clock.now += REMEMBER_SECONDS - 1
    assert b"a" in recent
    recent.add(b"b")
    clock.now += 2
    assert b"a" not in recent and b"b" in recent
    assert len(recent) == 1


def test_the_memory_is_bounded():
    recent = RecentRequests(limit=3, clock=Clock())
    for key in (b"a", b"b", b"c", b"d"):
        recent.add(key)
    assert len(recent) == 3 and b"a" not in recent and b"d" in recent


# ---- the gate over ASGI, around a stand-in for Bolt ----------------------------------------------


class FakeBolt:
    """Answers each dispatch with the next status given; records what it was handed."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict] = []

    async def async_dispatch(self, request) -> BoltResponse:
        self.bodies.append(request.body)
        status = self.statuses.pop(0) if self.statuses else 200
        return BoltResponse(status=status, body="")


def client(bolt: FakeBolt, recent: RecentRequests | None = None) -> httpx.AsyncClient:
    guard = SlackGuard(bolt, signing_secret=SECRET, recent=recent)  # type: ignore[arg-type]
    app = Starlette(routes=[Route("/slack/events", guard.handle, methods=["POST"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot")


async def send(http, body: bytes, retry: int = 0, content_type: str = FORM) -> httpx.Response:
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
    }
    if retry:
        headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
    return await http.post("/slack/events", content=body, headers=headers)


BODY = urlencode(COMMAND).encode()


async def test_a_first_delivery_that_failed_is_processed_when_retried():
    bolt = FakeBolt(500, 200)
    async with client(bolt) as http:
        assert (await send(http, BODY)).status_code == 500
        assert (await send(http, BODY, retry=1)).status_code == 200
        assert (await send(http, BODY, retry=2)).headers["X-Slack-No-Retry"] == "1"
    assert len(bolt.bodies) == 2


async def test_a_retry_after_the_memory_expired_is_processed_again():
    clock = Clock()
    bolt = FakeBolt()
    async with client(bolt, RecentRequests(clock=clock)) as http:
        await send(http, BODY)
        clock.now += REMEMBER_SECONDS + 1
        await send(http, BODY, retry=1)
    assert len(bolt.bodies) == 2


async def test_events_are_known_by_event_id_and_verifications_are_never_dropped():
    def event(time_sent: int) -> bytes:
        return json.dumps(
            {
                "type": "event_callback",
                "team_id": "T1",
                "event_id": "Ev123",
                "event_time": time_sent,
                "event": {"type": "app_mention"},
            }
        ).encode()

    verification = json.dumps({"type": "url_verification", "challenge": "c"}).encode()
    bolt = FakeBolt()
    async with client(bolt) as http:
        await send(http, event(1), content_type=JSON)
        assert (await send(http, event(2), retry=1, content_type=JSON)).headers.get(
            "X-Slack-No-Retry"
        ) == "1"
        await send(http, verification, content_type=JSON)
        await send(http, verification, retry=1, content_type=JSON)
    assert [b["type"] for b in bolt.bodies] == [
        "event_callback",
        "url_verification",
        "url_verification",
    ]


async def test_bolt_gets_the_payload_that_was_checked():
    # Bolt's parser would read the first as an empty interaction and fail on the second as JSON.
    forms = [{**COMMAND, "text": "help payload"}, {"{x": "1", **COMMAND}]
    bolt = FakeBolt()
    async with client(bolt) as http:
        for form in forms:
            body = urlencode(form, safe="{").encode()
            assert (await send(http, body)).status_code == 200
    assert bolt.bodies == forms
