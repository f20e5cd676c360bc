"""The gate in front of Bolt: size, signature, payload shape and Slack's retries, checked first.

``POST /slack/events`` goes through ``SlackGuard.handle``, in this order:

1. no ``X-Slack-Signature`` header, or an ``X-Slack-Request-Timestamp`` that is not digits
   within five minutes of now → 401, body unread;
2. a body over ``max_body`` bytes → 413, read no further than the limit (a forged signature
   on an oversized body is not worth hashing);
3. a signature that does not match the exact bytes → 401 (Bolt checks it again);
4. a payload that is not one Slack sends this app → 400: not UTF-8, not form-encoded (or JSON
   for the Events API), a slash command without ``command``/``text``/``user_id``/
   ``channel_id``/``team_id``/``response_url``/``trigger_id``, ``payload=`` that is not a JSON
   object, an interaction of an unknown ``type`` or without what its type needs (a block
   action without ``actions``, …);
5. a Slack retry (``X-Slack-Retry-Num`` ≥ 1) of a request this process has already taken →
   200 with ``X-Slack-No-Retry: 1``, and nothing else happens.

Only then does Bolt dispatch, so listeners see well-formed payloads only. Bolt keeps its own
behaviours (``url_verification``, ``ssl_check``, its signature check) and gets the payload
parsed here rather than re-parsing the body: Bolt's parser takes any form body containing the
substring ``payload`` for an interaction, so a command like ``/atlas-billing help payload``, or
one from a channel named ``#payload-alerts``, would reach it as an empty request (404); and
any body starting with ``{`` for JSON.
Lazy listeners re-parse the raw body; this app has none.

Bolt for Python does nothing with Slack's retry headers, hence step 5. Requests are
remembered by a hash of their signed body (Slack resends the identical body; the Events API
by ``event_id``) for ten minutes, in memory: a retry landing on another replica, or after a
restart, is processed again. Socket Mode (``SLACK_APP_TOKEN``) does not come through here.
A repeat is dropped with or without Slack's ``X-Slack-Retry-Num`` header: the header is not
signed, and a genuine new request never has the same body (each command and click carries
its own ``trigger_id``), so a repeat without it is a replay of a captured request.
A request that Bolt answered with a 5xx (its listener failed before acknowledging) is
forgotten, so Slack's retry of it is processed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, urlsplit

from slack_bolt.adapter.starlette.async_handler import to_starlette_response
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 100 * 1024
REMEMBER_SECONDS = 10 * 60
REMEMBER_AT_MOST = 100_000  # 32-byte keys: a few MB at most
STALE_SECONDS = 5 * 60  # Slack's own rule, and Bolt's

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

# Slack IDs are upper-case letters and digits (U…, W…, C…, G…, D…, T…, E…); the fakes in the
# tests use underscores too.
_SLACK_ID = re.compile(r"[A-Z0-9][A-Z0-9_]{0,39}", re.ASCII)
_TIMESTAMP = re.compile(rb"[0-9]{1,12}")
_RETRY_NUM = re.compile(r"[0-9]{1,3}", re.ASCII)
_LENGTH = re.compile(r"[0-9]{1,15}", re.ASCII)
_COMMAND_FIELDS = ("command", "text", "user_id", "channel_id", "team_id", "response_url")
_FORM_FIELDS_AT_MOST = 64


class Rejected(Exception):
    """A request refused before Bolt sees it; ``str()`` is the reason, without the input."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _malformed(reason: str) -> Rejected:
    return Rejected(400, reason)


@dataclass(frozen=True)
class Payload:
    """A checked Slack request: what it is, its parsed body, and how its retries are known."""

    kind: str  # "command", "interaction", "event", "url_verification", "ssl_check"
    body: dict[str, Any]
    key: bytes | None  # None: harmless to repeat (URL verification, SSL check)


# ---- the signature -------------------------------------------------------------------------------


def check_timestamp(timestamp: bytes, *, now: float) -> None:
    """Digits, within five minutes of now; raises Rejected(401). Needs no body, so it comes first."""
    if not _TIMESTAMP.fullmatch(timestamp) or abs(now - int(timestamp)) > STALE_SECONDS:
        raise Rejected(401, "invalid request")


def verify_signature(
    secret: str, body: bytes, timestamp: bytes, signature: bytes, *, now: float
) -> None:
    """Slack's v0 signature over the exact bytes, within five minutes; raises Rejected(401)."""
    check_timestamp(timestamp, now=now)
    digest = hmac.new(secret.encode(), b"v0:" + timestamp + b":" + body, hashlib.sha256)
    if not secret or not hmac.compare_digest(b"v0=" + digest.hexdigest().encode(), signature):
        raise Rejected(401, "invalid request")


# ---- the payload ---------------------------------------------------------------------------------


def read_payload(body: bytes, content_type: str | None) -> Payload:
    """The payload of a signed request, if it is one Slack sends this app; else Rejected(400)."""
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("the body is not UTF-8") from None
    if media == JSON:
        return _event(_json_object(text, "the body"), body)
    if media != FORM:
        raise _malformed(f"the content type must be {FORM} or {JSON}")
    form = _form(text)
    if "payload" in form:
        if len(form) > 1:
            raise _malformed("an interaction has only the field payload")
        return _interaction(_json_object(form["payload"], "payload"), body)
    if form.get("ssl_check") == "1":
        return Payload("ssl_check", form, None)
    if "command" in form:
        return _command(form, body)
    raise _malformed("neither a slash command nor an interaction")


def _form(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=_FORM_FIELDS_AT_MOST,
        )
    except (ValueError, UnicodeDecodeError):
        raise _malformed("the body is not form-encoded") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise _malformed("a form field is repeated")
    if "" in form:
        raise _malformed("a form field has no name")
    return form


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise _malformed(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    return value


def _key(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def _command(form: dict[str, str], body: bytes) -> Payload:
    missing = [name for name in _COMMAND_FIELDS if name not in form]
    if missing:
        raise _malformed(f"a slash command needs {', '.join(missing)}")
    if not form["command"].startswith("/"):
        raise _malformed("command is not a slash command")
    for name in ("user_id", "channel_id", "team_id"):
        _slack_id(form[name], name)
    _url(form["response_url"], "response_url")
    if not form.get("trigger_id"):
        raise _malformed("a slash command needs trigger_id")
    return Payload("command", form, _key(body))


# What each interaction type the app takes must carry: the manifest enables interactivity for the
# alert buttons and the connect form only (no shortcuts, select menus, or close notifications).
def _block_actions(payload: dict[str, Any]) -> None:
    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions:
        raise _malformed("a block action needs actions")
    for action in actions:
        if not isinstance(action, dict) or not _is_text(action.get("action_id")):
            raise _malformed("each action needs an action_id")
    for name in ("channel", "message", "container"):
        if name in payload and payload[name] is not None and not isinstance(payload[name], dict):
            raise _malformed(f"{name} is not an object")
    channel = payload.get("channel")
    if isinstance(channel, dict):
        _slack_id(channel.get("id"), "channel.id")
    if "response_url" in payload:
        _url(payload["response_url"], "response_url")


def _view_submission(payload: dict[str, Any]) -> None:
    view = payload.get("view")
    if not isinstance(view, dict) or not _is_text(view.get("callback_id")):
        raise _malformed("view_submission needs a view with a callback_id")
    state = view.get("state")
    if not isinstance(state, dict) or not isinstance(state.get("values"), dict):
        raise _malformed("view_submission needs view.state.values")


_INTERACTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "block_actions": _block_actions,
    "view_submission": _view_submission,
}


def _interaction(payload: dict[str, Any], body: bytes) -> Payload:
    kind = payload.get("type")
    if not isinstance(kind, str) or kind not in _INTERACTIONS:
        raise _malformed("unknown interaction type")
    user, team = payload.get("user"), payload.get("team")
    if not isinstance(user, dict):
        raise _malformed("an interaction needs a user")
    _slack_id(user.get("id"), "user.id")
    if not isinstance(team, dict):
        raise _malformed("an interaction needs a team")
    _slack_id(team.get("id"), "team.id")
    _INTERACTIONS[kind](payload)
    return Payload("interaction", payload, _key(body))


def _event(payload: dict[str, Any], body: bytes) -> Payload:
    kind = payload.get("type")
    if kind == "url_verification":
        if not _is_text(payload.get("challenge")):
            raise _malformed("url_verification needs a challenge")
        return Payload("url_verification", payload, None)
    if kind == "event_callback":
        event, event_id = payload.get("event"), payload.get("event_id")
        if not isinstance(event, dict) or not _is_text(event.get("type")):
            raise _malformed("event_callback needs an event with a type")
        if not _is_text(event_id):
            raise _malformed("event_callback needs an event_id")
        _slack_id(payload.get("team_id"), "team_id")
        _entities(event, "event")
        # Slack's documented key for recognising a redelivered event.
        return Payload("event", payload, _key(b"event:" + event_id.encode()))
    if kind == "app_rate_limited":
        return Payload("event", payload, _key(body))
    raise _malformed("unknown event type")


def _entities(part: dict[str, Any], where: str) -> None:
    """`user` and `channel` are an ID or an object wherever Bolt looks for them (it tests
    ``"id" in value`` on anything else and fails with a 500)."""
    for name in ("user", "channel"):
        value = part.get(name)
        if value is not None and not isinstance(value, str | dict):
            raise _malformed(f"{where}.{name} must be an ID or an object")
    for name in ("item", "message", "previous_message", "assistant_thread"):
        if isinstance(inner := part.get(name), dict):
            _entities(inner, f"{where}.{name}")


def _is_text(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _slack_id(value: Any, name: str) -> None:
    if not isinstance(value, str) or not _SLACK_ID.fullmatch(value):
        raise _malformed(f"{name} is not a Slack ID")


def _url(value: Any, name: str) -> None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("https", "http") or not parts.netloc:
        raise _malformed(f"{name} is not a URL")


# ---- retries --------------------------------------------------------------------------------------


class RecentRequests:
    """Keys of requests taken in the last ``seconds``, oldest first, at most ``limit`` of them.

    One event loop uses it and nothing here awaits, so checking and adding cannot interleave.
    """

    def __init__(
        self,
        *,
        seconds: float = REMEMBER_SECONDS,
        limit: int = REMEMBER_AT_MOST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.limit = limit
        self.clock = clock
        self._until: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key: bytes) -> bool:
        self._expire()
        return key in self._until

    def add(self, key: bytes) -> None:
        self._expire()
        self._until.pop(key, None)
        self._until[key] = self.clock() + self.seconds
        while len(self._until) > self.limit:
            self._until.popitem(last=False)

    def discard(self, key: bytes) -> None:
        self._until.pop(key, None)

    def _expire(self) -> None:
        # Every entry lives equally long, so the oldest are first.
        now = self.clock()
        while self._until:
            key, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[key]


def retry_number(value: str | None) -> int:
    """``X-Slack-Retry-Num``: 0 for a first delivery; Rejected(400) when it is not a number."""
    if value is None:
        return 0
    if not _RETRY_NUM.fullmatch(value):
        raise _malformed("X-Slack-Retry-Num is not a number")
    return int(value)


# ---- the gate -------------------------------------------------------------------------------------


class SlackGuard:
    """``await guard.handle(request)`` for ``POST /slack/events``; see the module docstring."""

    def __init__(
        self,
        app: AsyncApp,
        *,
        signing_secret: str,
        max_body: int = MAX_BODY_BYTES,
        recent: RecentRequests | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.signing_secret = signing_secret
        self.max_body = max_body
        self.recent = recent if recent is not None else RecentRequests()
        self.clock = clock

    async def handle(self, request: Request) -> Response:
        try:
            body, payload, retry = await self._check(request)
        except Rejected as exc:
            level = logging.INFO if exc.status == 401 else logging.WARNING
            log.log(level, "refused a Slack request (%s): %s", exc.status, exc.reason)
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        if payload.key is not None and payload.key in self.recent:
            if retry:
                log.info(
                    "dropped Slack retry %s (%r) of a request already taken",
                    retry,
                    request.headers.get("x-slack-retry-reason", "no reason given"),
                )
            else:
                log.warning("dropped a replayed Slack request (same signed body as one taken)")
            return Response(status_code=200, headers={"X-Slack-No-Retry": "1"})
        if payload.key is not None:
            self.recent.add(payload.key)
        try:
            response = await self._dispatch(request, body, payload)
        except Exception:
            self._forget(payload)
            raise
        if response.status_code >= 500:
            self._forget(payload)
        return response

    async def _check(self, request: Request) -> tuple[bytes, Payload, int]:
        headers = request.headers
        signature = headers.get("x-slack-signature")
        timestamp = headers.get("x-slack-request-timestamp")
        if signature is None or timestamp is None:
            raise Rejected(401, "invalid request")
        check_timestamp(timestamp.encode("latin-1"), now=self.clock())
        body = await self._read(request)
        verify_signature(
            self.signing_secret,
            body,
            timestamp.encode("latin-1"),
            signature.encode("latin-1"),
            now=self.clock(),
        )
        payload = read_payload(body, headers.get("content-type"))
        return body, payload, retry_number(headers.get("x-slack-retry-num"))

    async def _read(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not _LENGTH.fullmatch(declared):
                raise _malformed("Content-Length is not a number")
            if int(declared) > self.max_body:
                raise Rejected(413, f"the body is larger than {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise Rejected(413, f"the body is larger than {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _dispatch(self, request: Request, body: bytes, payload: Payload) -> Response:
        # Built from the payload checked above, as Socket Mode builds its requests, so that Bolt
        # does not parse the body again (see the docstring); then given the raw body, which its
        # signature check reads, and HTTP mode back.
        # Bolt reads query and headers as mappings; its annotations ask for a dict.
        bolt_request = AsyncBoltRequest(
            body=payload.body,
            query=request.query_params,  # type: ignore[arg-type]
            headers=request.headers,  # type: ignore[arg-type]
            mode="socket_mode",
        )
        bolt_request.raw_body = body.decode("utf-8")
        bolt_request.mode = "http"
        return to_starlette_response(await self.app.async_dispatch(bolt_request))

    def _forget(self, payload: Payload) -> None:
        if payload.key is not None:
            self.recent.discard(payload.key)
