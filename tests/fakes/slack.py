"""A fake Slack Web API on a loopback HTTP server, and a driver that sends signed Slack requests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer as ThreadingHTTPServer  # bench/ack_latency.py swaps it
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
import yaml

from tests.fakes import clock as test_clock

T = TypeVar("T")

BOT_USER_ID = "U_BOT"
BOT_ID = "B_BOT"
TEAM_ID = "T1"
# Special routes take part in fault injection under these names.
UPLOAD = "upload"
RESPONSE_URL = "response_url"

MANIFEST = Path(__file__).resolve().parents[2] / "manifest.yml"
RESPONSE_URL_USES = 5
RESPONSE_URL_SECONDS = 30 * 60

# The bot-token scopes each Web API method needs, from its page on https://api.slack.com/methods
# ("Required scopes"): any one of a method's scopes will do. A method whose scope the app lacks
# answers `missing_scope` with `needed` and `provided`
# (https://api.slack.com/authentication/oauth-v2#errors). The fake's app has exactly the scopes
# manifest.yml declares, so a call the manifest does not cover fails here as it would in Slack.
METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    "auth.test": (),
    "chat.postMessage": ("chat:write",),
    "chat.update": ("chat:write",),
    "chat.postEphemeral": ("chat:write",),
    "users.info": ("users:read",),
    "usergroups.list": ("usergroups:read",),
    "conversations.info": ("channels:read", "groups:read"),
    "conversations.history": ("channels:history", "groups:history"),
    "conversations.join": ("channels:join",),
    "views.open": (),
    "views.update": (),
    "files.getUploadURLExternal": ("files:write",),
    "files.completeUploadExternal": ("files:write",),
}


def manifest_scopes() -> frozenset[str]:
    """The bot scopes manifest.yml asks for."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    return frozenset(manifest["oauth_config"]["scopes"]["bot"])


class Call(NamedTuple):
    method: str
    params: dict[str, Any]


class Response(NamedTuple):
    """One post to a response_url (what Bolt's `respond()` sends)."""

    key: str
    body: dict[str, Any]


@dataclass
class Upload:
    """One file of the files_upload_v2 flow: announced, uploaded, then completed."""

    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    title: str | None = None
    completed: bool = False
    channel_id: str | None = None
    channels: list[str] = field(default_factory=list)
    initial_comment: str | None = None
    thread_ts: str | None = None
    completed_at: float | None = None  # time.monotonic() of files.completeUploadExternal


@dataclass
class _Fault:
    status: int
    error: str
    retry_after: float | str | None  # sent as the Retry-After header's text
    times: int
    applied: bool = False


@dataclass
class _Delay:
    seconds: float
    times: int | None


class FakeSlack:
    """The Slack Web API on 127.0.0.1, port 0; start with `with FakeSlack() as fake:`.

    Every call is recorded; channels keep their messages as Slack would show them after
    `chat.update`. Methods are served whether posted as JSON, form or multipart, with arguments
    in the query string too, because slack_sdk uses all of those.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self.reset()

    # ---- life cycle

    def start(self) -> FakeSlack:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # Client connections kept alive must not hold up stop(): their threads are daemons
        # and are never joined.
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # the bound socket's getsockname(): a str host
        return f"http://{host}:{port}/"

    @property
    def base_url(self) -> str:
        """What `AsyncWebClient(base_url=...)` takes: it must end with a slash."""
        return self.url + "api/"

    def reset(self) -> None:
        """Forget calls, messages, uploads, responses and faults; back to the default directory."""
        with self._cond:
            self._calls: list[Call] = []
            self._messages: dict[str, dict[str, dict[str, Any]]] = {}
            self._ephemerals: list[dict[str, Any]] = []
            self._views: list[dict[str, Any]] = []
            self._view_updates: list[dict[str, Any]] = []
            self._uploads: dict[str, Upload] = {}
            self._upload_posts: list[str] = []
            self._responses: list[Response] = []
            self._faults: dict[str, deque[_Fault]] = {}
            self._delays: dict[str, _Delay] = {}
            self._errors: list[str] = []
            self.scopes: frozenset[str] = manifest_scopes()
            self._triggers: dict[str, float] = {}
            self._response_urls: dict[str, list[float]] = {}  # key: [issued, uses]
            self.history_tier: Literal["tier3", "restricted"] = "tier3"
            self._history_calls: list[float] = []
            self._users: dict[str, dict[str, Any]] = {}
            self._channels: dict[str, dict[str, Any]] = {}
            # Slack timestamps as integer microseconds, so each one is unique and later; they
            # start at the tests' clock (the wall clock moved to TEST_TODAY, the bot's clock),
            # as Slack's start at the real one, so `oldest=` filters behave as for real.
            self._clock = int(test_clock.now().timestamp() * 1_000_000)
            self.add_user("U_ADMIN", is_admin=True, name="admin")
            self.add_user("U_OWNER", is_owner=True, name="owner")
            self.add_user("U_MEMBER", name="member")
            self.add_channel("C_LINKED", name="billing")
            self.add_channel("C_OTHER", name="general")
            self._cond.notify_all()

    # ---- configuration

    def add_user(
        self,
        user_id: str,
        *,
        is_admin: bool = False,
        is_owner: bool = False,
        is_primary_owner: bool = False,
        is_bot: bool = False,
        deleted: bool = False,
        name: str | None = None,
        tz: str = "UTC",
        team_id: str = TEAM_ID,
        is_stranger: bool = False,
        is_restricted: bool = False,
    ) -> dict[str, Any]:
        """A user ``users.info`` knows. Slack Connect: a member of another organisation in a
        shared channel has their own ``team_id``, and their ``is_admin``/``is_owner`` are
        those of their own organisation (https://api.slack.com/apis/channels-between-orgs);
        ``is_stranger`` marks one the app sees through no shared channel
        (https://api.slack.com/types/user). ``is_restricted``: a guest."""
        user = {
            "id": user_id,
            "team_id": team_id,
            "name": name or user_id.lower(),
            "real_name": (name or user_id).title(),
            "deleted": deleted,
            "is_admin": is_admin,
            "is_owner": is_owner,
            "is_primary_owner": is_primary_owner,
            "is_bot": is_bot,
            "is_restricted": is_restricted,
            "is_ultra_restricted": False,
            "tz": tz,
            "profile": {"display_name": name or user_id.lower()},
        }
        if is_stranger:
            user["is_stranger"] = True
        with self._cond:
            self._users[user_id] = user
        return user

    def add_channel(
        self, channel_id: str, *, name: str, is_private: bool = False, is_member: bool = True
    ) -> dict[str, Any]:
        """A channel `conversations.info` knows; posting to one the bot is not in fails."""
        channel = {
            "id": channel_id,
            "name": name,
            "is_channel": not is_private,
            "is_group": is_private,
            "is_private": is_private,
            "is_member": is_member,
            "is_archived": False,
        }
        with self._cond:
            self._channels[channel_id] = channel
        return channel

    def issue_trigger(self, trigger_id: str, *, age: float = 0.0) -> None:
        """A trigger ID Slack issued `age` seconds ago (with a slash command or a click).

        It opens one modal within 3 seconds of being issued
        (https://api.slack.com/interactivity/handling#modal_responses: "trigger_id … expires
        in 3 seconds"); after that `views.open` answers `expired_trigger_id`, and an ID Slack
        never issued `invalid_trigger_id` (https://api.slack.com/methods/views.open#errors).
        """
        with self._cond:
            self._triggers[trigger_id] = time.monotonic() - age

    def archive_channel(self, channel_id: str) -> None:
        """Archive the channel: from now on posting, updating and sharing files in it fail with
        ``is_archived``, as Slack does; its history can still be read."""
        with self._cond:
            channel = self._channels.get(channel_id) or self.add_channel(
                channel_id, name=channel_id.lower()
            )
            channel["is_archived"] = True

    def fail_next(
        self,
        method: str,
        *,
        status: int = 200,
        error: str | None = None,
        retry_after: float | str | None = None,
        times: int = 1,
        applied: bool = False,
    ) -> None:
        """Make the next `times` calls of `method` fail (also "upload" and "response_url").

        Status 200 answers `ok: false` with `error`; 429 answers `ratelimited` with a
        Retry-After header (default 1 second); 0 drops the connection without an answer;
        other statuses answer that status.
        With `applied`, the call is carried out first and only its answer is the fault:
        Slack did the work (the message is in the channel) but answered with an error.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        default = {200: "fatal_error", 429: "ratelimited"}.get(status, "internal_error")
        with self._cond:
            self._faults.setdefault(method, deque()).append(
                _Fault(status, error or default, retry_after, times, applied)
            )

    def delay(self, method: str, seconds: float, *, times: int | None = None) -> None:
        """Hold back the answer to the next `times` calls of `method` (None: until changed).

        The call is recorded and carried out at once (a message is in the channel, waiters
        wake up); only the HTTP answer waits `seconds`, without blocking other requests:
        Slack did the work, its answer is slow. `delay(method, 0)` removes the delay.
        """
        if seconds < 0:
            raise ValueError(f"a delay cannot be negative: {seconds!r}")
        with self._cond:
            if seconds == 0:
                self._delays.pop(method, None)
            else:
                self._delays[method] = _Delay(seconds, times)

    def response_url(self, key: str = "default", *, age: float = 0.0) -> str:
        """A response_url on this server, issued `age` seconds ago; what is posted to it lands
        in `responses`. Like Slack's, it takes at most 5 posts within 30 minutes
        (https://api.slack.com/interactivity/handling#message_responses), then answers
        404 `used_url` or `expired_url`."""
        with self._cond:
            self._response_urls.setdefault(key, [time.monotonic() - age, 0])
        return f"{self.url}response/{key}"

    # ---- what happened

    @property
    def calls(self) -> list[Call]:
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        """The params of every call of `method`, oldest first."""
        with self._cond:
            return [call.params for call in self._calls if call.method == method]

    def messages(self, channel: str) -> dict[str, dict[str, Any]]:
        """The channel as it stands: ts → message, after updates, in posting order."""
        with self._cond:
            return {ts: dict(message) for ts, message in self._messages.get(channel, {}).items()}

    @property
    def ephemerals(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._ephemerals)

    @property
    def views(self) -> list[dict[str, Any]]:
        """Every view opened with `views.open`, as it now stands (after any `views.update`)."""
        with self._cond:
            return list(self._views)

    @property
    def view_updates(self) -> list[dict[str, Any]]:
        """Every view `views.update` put up, in order."""
        with self._cond:
            return list(self._view_updates)

    @property
    def uploads(self) -> list[Upload]:
        """Files of the files_upload_v2 flow, in the order they were announced."""
        with self._cond:
            return list(self._uploads.values())

    @property
    def upload_posts(self) -> list[str]:
        """The file ID of every POST to an upload URL (faulted ones too), oldest first."""
        with self._cond:
            return list(self._upload_posts)

    @property
    def responses(self) -> list[Response]:
        with self._cond:
            return list(self._responses)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of requests the fake itself failed on (a bug here, not in the app)."""
        with self._cond:
            return list(self._errors)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5) -> T:
        """Block until `predicate()` is truthy (re-checked on each request) and return it."""
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
        if not result:
            raise TimeoutError(f"condition not met within {timeout}s; calls: {self.calls}")
        return result

    async def wait_for_async(self, predicate: Callable[[], T], timeout: float = 5) -> T:
        """`wait_for` that leaves the event loop free, for when the app runs on the same loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    # ---- serving (called on the server's threads)

    def _next_ts(self) -> str:
        self._clock += 100
        seconds, micros = divmod(self._clock, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08X}"

    def _take_fault(self, name: str) -> _Fault | None:
        queue = self._faults.get(name)
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.popleft()
        return fault

    def _take_delay(self, method: str) -> float:
        with self._cond:
            delay = self._delays.get(method)
            if delay is None:
                return 0.0
            if delay.times is not None:
                delay.times -= 1
                if delay.times <= 0:
                    del self._delays[method]
            return delay.seconds

    def _api(self, method: str, params: dict[str, Any], token: str | None) -> _Reply:
        reply = self._serve_api(method, params, token)
        if seconds := self._take_delay(method):
            time.sleep(seconds)  # outside the lock: other requests are served meanwhile
        return reply

    def _serve_api(self, method: str, params: dict[str, Any], token: str | None) -> _Reply:
        with self._cond:
            try:
                self._calls.append(Call(method, params))
                fault = self._take_fault(method)
                if fault is not None and not fault.applied:
                    return _fault_reply(fault)
                reply = self._serve_method(method, params, token)
                return reply if fault is None else _fault_reply(fault)
            finally:
                self._cond.notify_all()

    def _serve_method(self, method: str, params: dict[str, Any], token: str | None) -> _Reply:
        if token is None:
            return _Reply.json({"ok": False, "error": "not_authed"})
        if not token.startswith(("xoxb-", "xoxp-")):
            return _Reply.json({"ok": False, "error": "invalid_auth"})
        serve = _METHODS.get(method)
        if serve is None:
            return _Reply.json({"ok": False, "error": "unknown_method"})
        needed = METHOD_SCOPES[method]
        if needed and not self.scopes.intersection(needed):
            return _Reply.json(
                {
                    "ok": False,
                    "error": "missing_scope",
                    "needed": ",".join(needed),
                    "provided": ",".join(sorted(self.scopes)),
                }
            )
        answer = serve(self, params)
        status = answer.pop("_status", 200)
        return _Reply.json(answer, status, **answer.pop("_headers", {}))

    def _upload(self, file_id: str, data: bytes) -> _Reply:
        with self._cond:
            try:
                self._upload_posts.append(file_id)
                fault = self._take_fault(UPLOAD)
                if fault is not None and not fault.applied:
                    return _upload_fault_reply(fault)
                upload = self._uploads.get(file_id)
                if upload is None:
                    return _Reply.text(404, "file not found")
                upload.data = data
                if fault is not None:
                    return _upload_fault_reply(fault)
                # What files.slack.com answers, as text/plain; slack_sdk only looks at the status.
                return _Reply.text(200, f"OK - {len(data)}")
            finally:
                self._cond.notify_all()

    def _respond(self, key: str, body: dict[str, Any]) -> _Reply:
        with self._cond:
            try:
                fault = self._take_fault(RESPONSE_URL)
                if fault is not None:
                    self._responses.append(Response(key, body))
                    return _Reply.text(fault.status if fault.status != 200 else 404, fault.error)
                issued = self._response_urls.setdefault(key, [time.monotonic(), 0])
                if time.monotonic() - issued[0] > RESPONSE_URL_SECONDS:
                    return _Reply.text(404, "expired_url")
                if issued[1] >= RESPONSE_URL_USES:
                    return _Reply.text(404, "used_url")
                issued[1] += 1
                self._responses.append(Response(key, body))
                return _Reply.text(200, "ok")
            finally:
                self._cond.notify_all()

    def _error(self, text: str) -> None:
        with self._cond:
            self._errors.append(text)
            self._cond.notify_all()


# ---- Block Kit, checked as Slack checks it ---------------------------------------------------

# Slack's limits (https://api.slack.com/reference/block-kit/blocks and the pages of each block
# and element); a message or view breaking one is refused whole: `invalid_blocks` with the
# reasons in `errors` (python-slack-sdk #1658, #1521).
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT = 40_000  # chat.postMessage `text`: longer is `msg_too_long`
# A file shared with files.completeUploadExternal is processed asynchronously; until then, and
# in any channel it was not shared to, an image block naming it as `slack_file` is refused
# ("invalid slack file": python-slack-sdk #1658, #1797; java-slack-sdk #1335, #1349).
PROCESSING_SECONDS = 0.5


def block_errors(fake: FakeSlack, blocks: Any, *, channel: str | None, limit: int) -> list[str]:
    """Why Slack would refuse these blocks; empty when it would take them."""
    if not isinstance(blocks, list):
        return ["blocks must be an array"]
    errors = []
    if len(blocks) > limit:
        errors.append(f"must provide no more than {limit} items [json-pointer:/blocks]")
    for n, block in enumerate(blocks):
        where = f"[json-pointer:/blocks/{n}]"
        if not isinstance(block, dict) or "type" not in block:
            errors.append(f"missing required field: type {where}")
            continue
        errors += [f"{e} {where}" for e in _block_errors(fake, block, channel)]
    return errors


def _text_len(obj: Any) -> int:
    return len(obj.get("text", "")) if isinstance(obj, dict) else 0


def _block_errors(fake: FakeSlack, block: dict[str, Any], channel: str | None) -> list[str]:
    kind = block["type"]
    errors = []
    if len(str(block.get("block_id", ""))) > 255:
        errors.append("block_id must be at most 255 characters")
    if kind == "section":
        if "text" not in block and "fields" not in block:
            errors.append("a section needs text or fields")
        if _text_len(block.get("text")) > 3000:
            errors.append("section text must be at most 3000 characters")
        fields = block.get("fields") or []
        if len(fields) > 10:
            errors.append("a section has at most 10 fields")
        if any(_text_len(f) > 2000 for f in fields):
            errors.append("section fields must be at most 2000 characters each")
    elif kind == "header":
        if _text_len(block.get("text")) > 150:
            errors.append("header text must be at most 150 characters")
    elif kind == "context":
        if not 1 <= len(block.get("elements") or []) <= 10:
            errors.append("a context block has 1 to 10 elements")
    elif kind == "actions":
        elements = block.get("elements") or []
        if not 1 <= len(elements) <= 25:
            errors.append("an actions block has 1 to 25 elements")
        for element in elements:
            if element.get("type") == "button":
                if _text_len(element.get("text")) > 75:
                    errors.append("button text must be at most 75 characters")
                if len(str(element.get("value", ""))) > 2000:
                    errors.append("button value must be at most 2000 characters")
    elif kind == "image":
        if len(str(block.get("alt_text", ""))) > 2000 or not block.get("alt_text"):
            errors.append("an image needs alt_text of at most 2000 characters")
        file = block.get("slack_file")
        if file is not None:
            upload = fake._uploads.get((file or {}).get("id", ""))
            ready = (
                upload is not None
                and upload.completed_at is not None
                and time.monotonic() - upload.completed_at >= PROCESSING_SECONDS
            )
            shared = upload is not None and channel in (upload.channel_id, *upload.channels)
            if not (ready and shared):
                errors.append("invalid slack file")
        elif not block.get("image_url"):
            errors.append("an image needs image_url or slack_file")
    elif kind not in ("divider", "input", "rich_text", "file", "video"):
        errors.append(f"unknown block type {kind!r}")
    return errors


def _content_errors(
    fake: FakeSlack, content: dict[str, Any], channel: str | None
) -> dict[str, Any] | None:
    """`invalid_blocks` or `msg_too_long` for a message Slack would refuse, else None."""
    if len(content.get("text") or "") > MAX_TEXT:
        return {"ok": False, "error": "msg_too_long"}
    if content.get("blocks"):
        errors = block_errors(fake, content["blocks"], channel=channel, limit=MAX_MESSAGE_BLOCKS)
        if errors:
            return {"ok": False, "error": "invalid_blocks", "errors": errors}
    return None


# ---- the Web API methods (run under the fake's lock) -------------------------------------------


def _auth_test(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True,
        "url": "https://fake.slack.com/",
        "team": "Fake",
        "user": "billing-bot",
        "team_id": TEAM_ID,
        "user_id": BOT_USER_ID,
        "bot_id": BOT_ID,
        "is_enterprise_install": False,
    }


def _channel_error(
    fake: FakeSlack, channel: str | None, *, writing: bool = True, posting: bool = False
) -> dict[str, Any] | None:
    """Slack's refusal of a call in `channel`, or None.

    Membership, as Slack has it: with `chat:write.public` a bot posts (and edits its posts) in
    a public channel it never joined (https://api.slack.com/scopes/chat:write.public); reading
    history and sharing files there need membership, answered `not_in_channel`
    (https://api.slack.com/methods/conversations.history, "not_in_channel";
    https://api.slack.com/methods/files.completeUploadExternal). A private channel the bot is
    not in does not exist for it: `channel_not_found`.
    """
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    known = fake._channels.get(channel)
    if known is not None and not known["is_member"] and known["is_private"]:
        return {"ok": False, "error": "channel_not_found"}
    if writing and known is not None and known["is_archived"]:
        return {"ok": False, "error": "is_archived"}
    if known is not None and not known["is_member"]:
        if posting and "chat:write.public" in fake.scopes:
            return None
        return {"ok": False, "error": "not_in_channel"}
    return None


def _content(params: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for key in ("text", "blocks", "attachments", "metadata"):
        if key in params:
            value = params[key]
            # Form-encoded calls carry blocks and attachments as JSON strings.
            if key != "text" and isinstance(value, str):
                value = json.loads(value)
            content[key] = value
    return content


def _post_message(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    channel = params.get("channel")
    if (error := _channel_error(fake, channel, posting=True)) is not None:
        return error
    assert channel is not None  # _channel_error refuses a missing channel
    content = _content(params)
    if not any(content.get(k) for k in ("text", "blocks", "attachments")):
        return {"ok": False, "error": "no_text"}
    if (refused := _content_errors(fake, content, channel)) is not None:
        return refused
    ts = fake._next_ts()
    message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts, **content}
    if params.get("thread_ts"):
        message["thread_ts"] = params["thread_ts"]
    fake._messages.setdefault(channel, {})[ts] = message
    return {"ok": True, "channel": channel, "ts": ts, "message": message}


def _update(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    channel, ts = params.get("channel"), params.get("ts")
    if (error := _channel_error(fake, channel, posting=True)) is not None:
        return error
    assert channel is not None  # _channel_error refuses a missing channel
    message = fake._messages.get(channel, {}).get(ts) if ts is not None else None
    if message is None:
        return {"ok": False, "error": "message_not_found"}
    message.update(_content(params))
    message["edited"] = {"user": BOT_USER_ID, "ts": fake._next_ts()}
    return {
        "ok": True,
        "channel": channel,
        "ts": ts,
        "text": message.get("text", ""),
        "message": message,
    }


def _post_ephemeral(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    channel, user = params.get("channel"), params.get("user")
    if (error := _channel_error(fake, channel)) is not None:
        return error
    if user not in fake._users:
        return {"ok": False, "error": "user_not_found"}
    ts = fake._next_ts()
    fake._ephemerals.append({"channel": channel, "user": user, "ts": ts, **_content(params)})
    return {"ok": True, "message_ts": ts}


def _users_info(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    user = fake._users.get(params.get("user", ""))
    if user is None:
        return {"ok": False, "error": "user_not_found"}
    return {"ok": True, "user": user}


def _conversations_info(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    channel = fake._channels.get(params.get("channel", ""))
    if channel is None:
        return {"ok": False, "error": "channel_not_found"}
    return {"ok": True, "channel": channel}


# conversations.history's tiers. Tier 3: about 50 requests a minute, up to 999 messages a page
# (https://api.slack.com/methods/conversations.history). The restricted tier Slack applies to
# some commercially distributed apps since May 2025: 1 request a minute, at most 15 messages a
# page (https://api.slack.com/changelog/2025-05-terms-rate-limit-update-and-faq). Pages follow
# `response_metadata.next_cursor` (https://api.slack.com/apis/pagination).
HISTORY_TIERS = {"tier3": (999, 50), "restricted": (15, 1)}


def _history(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    """Newest first, like Slack; message metadata only with ``include_all_metadata``."""
    channel = params.get("channel")
    if (error := _channel_error(fake, channel, writing=False)) is not None:
        return error
    assert channel is not None  # _channel_error refuses a missing channel
    page_cap, per_minute = HISTORY_TIERS[fake.history_tier]
    now = time.monotonic()
    recent = [t for t in fake._history_calls if now - t < 60]
    if len(recent) >= per_minute:
        wait = int(60 - (now - recent[0])) + 1
        return {
            "ok": False,
            "error": "ratelimited",
            "_status": 429,
            "_headers": {"Retry-After": str(wait)},
        }
    fake._history_calls = [*recent, now]
    oldest = float(params.get("oldest") or 0)
    limit = min(int(params.get("limit") or 100), page_cap)
    before = float(params["cursor"]) if params.get("cursor") else None
    with_metadata = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
    found = []
    for ts, message in sorted(fake._messages.get(channel, {}).items(), reverse=True):
        if float(ts) <= oldest or (before is not None and float(ts) >= before):
            continue
        shown = dict(message)
        if not with_metadata:
            shown.pop("metadata", None)
        found.append(shown)
    page = found[:limit]
    answer: dict[str, Any] = {"ok": True, "messages": page, "has_more": len(found) > limit}
    if len(found) > limit:
        answer["response_metadata"] = {"next_cursor": page[-1]["ts"]}
    return answer


def _conversations_join(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    """A bot joins a public channel by itself; a private one needs an invitation
    (https://api.slack.com/methods/conversations.join: `method_not_supported_for_channel_type`,
    `is_archived`, `channel_not_found`)."""
    channel = fake._channels.get(params.get("channel", ""))
    if channel is None or (channel["is_private"] and not channel["is_member"]):
        return {"ok": False, "error": "channel_not_found"}
    if channel["is_private"]:
        return {"ok": False, "error": "method_not_supported_for_channel_type"}
    if channel["is_archived"]:
        return {"ok": False, "error": "is_archived"}
    already = channel["is_member"]
    channel["is_member"] = True
    answer: dict[str, Any] = {"ok": True, "channel": channel}
    if already:
        answer["warning"] = "already_in_channel"
    return answer


TRIGGER_SECONDS = 3.0


def _views_open(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    view = params.get("view")
    if isinstance(view, str):
        view = json.loads(view)
    trigger = params.get("trigger_id")
    if not trigger or not isinstance(view, dict):
        return {"ok": False, "error": "invalid_arguments"}
    issued = fake._triggers.get(trigger)
    if issued is None:
        return {"ok": False, "error": "invalid_trigger_id"}
    if time.monotonic() - issued > TRIGGER_SECONDS:
        return {"ok": False, "error": "expired_trigger_id"}
    if errors := block_errors(fake, view.get("blocks", []), channel=None, limit=MAX_VIEW_BLOCKS):
        return {
            "ok": False,
            "error": "invalid_arguments",
            "response_metadata": {"messages": errors},
        }
    opened = {"id": fake._next_id("V"), "team_id": TEAM_ID, "hash": fake._next_ts(), **view}
    opened.setdefault("state", {"values": {}})
    fake._views.append(opened)
    return {"ok": True, "view": opened}


def _views_update(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    """Replace an open view by its ID (https://api.slack.com/methods/views.update): an ID the
    fake never opened is `not_found`; a stale `hash` is `hash_conflict`."""
    view = params.get("view")
    if isinstance(view, str):
        view = json.loads(view)
    if not isinstance(view, dict) or not params.get("view_id"):
        return {"ok": False, "error": "invalid_arguments"}
    if errors := block_errors(fake, view.get("blocks", []), channel=None, limit=MAX_VIEW_BLOCKS):
        return {
            "ok": False,
            "error": "invalid_arguments",
            "response_metadata": {"messages": errors},
        }
    for i, shown in enumerate(fake._views):
        if shown["id"] == params["view_id"]:
            if params.get("hash") and params["hash"] != shown["hash"]:
                return {"ok": False, "error": "hash_conflict"}
            updated = {"id": shown["id"], "team_id": TEAM_ID, "hash": fake._next_ts(), **view}
            updated.setdefault("state", {"values": {}})
            fake._views[i] = updated
            fake._view_updates.append(updated)
            return {"ok": True, "view": updated}
    return {"ok": False, "error": "not_found"}


def _get_upload_url(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    filename, length = params.get("filename"), params.get("length")
    if not filename or length is None:
        return {"ok": False, "error": "invalid_arguments"}
    file_id = fake._next_id("F")
    fake._uploads[file_id] = Upload(file_id=file_id, filename=filename, length=int(length))
    return {"ok": True, "upload_url": f"{fake.url}upload/{file_id}", "file_id": file_id}


def _complete_upload(fake: FakeSlack, params: dict[str, Any]) -> dict[str, Any]:
    files = params.get("files")
    if isinstance(files, str):
        files = json.loads(files)
    channel_id = params.get("channel_id")
    channels = params.get("channels")
    channels = channels.split(",") if isinstance(channels, str) else list(channels or [])
    targets = [channel_id] if channel_id else channels
    for channel in targets:
        if (error := _channel_error(fake, channel)) is not None:
            return error
    done = []
    for item in files or []:
        upload = fake._uploads.get(item.get("id", ""))
        if upload is None or upload.data is None:
            return {"ok": False, "error": "file_not_found"}
        upload.title = item.get("title") or upload.filename
        upload.completed = True
        upload.completed_at = time.monotonic()
        upload.channel_id = channel_id
        upload.channels = channels
        upload.initial_comment = params.get("initial_comment")
        upload.thread_ts = params.get("thread_ts")
        done.append(
            {
                "id": upload.file_id,
                "name": upload.filename,
                "title": upload.title,
                "size": len(upload.data),
            }
        )
    if not done:
        return {"ok": False, "error": "invalid_arguments"}
    # Slack shares the files in the channel as a message carrying the initial comment.
    for channel in targets:
        ts = fake._next_ts()
        fake._messages.setdefault(channel, {})[ts] = {
            "type": "message",
            "subtype": "file_share",
            "user": BOT_USER_ID,
            "ts": ts,
            "text": params.get("initial_comment") or "",
            "files": done,
        }
    return {"ok": True, "files": done}


_METHODS: dict[str, Callable[[FakeSlack, dict[str, Any]], dict[str, Any]]] = {
    "auth.test": _auth_test,
    "chat.postMessage": _post_message,
    "chat.update": _update,
    "chat.postEphemeral": _post_ephemeral,
    "users.info": _users_info,
    "conversations.info": _conversations_info,
    "conversations.history": _history,
    "conversations.join": _conversations_join,
    "views.open": _views_open,
    "views.update": _views_update,
    "files.getUploadURLExternal": _get_upload_url,
    "files.completeUploadExternal": _complete_upload,
}


# ---- HTTP ---------------------------------------------------------------------------------------


class _Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]

    @classmethod
    def json(cls, payload: dict[str, Any], status: int = 200, **headers: str) -> _Reply:
        body = json.dumps(payload).encode()
        return cls(status, body, "application/json; charset=utf-8", headers)

    @classmethod
    def text(cls, status: int, text: str) -> _Reply:
        return cls(status, text.encode(), "text/plain; charset=utf-8", {})


def _fault_reply(fault: _Fault) -> _Reply:
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    return _Reply.json({"ok": False, "error": fault.error}, fault.status, **headers)


def _upload_fault_reply(fault: _Fault) -> _Reply:
    """The upload URL answers text, never `ok: false`: a 200 fault there is a 500."""
    reply = _Reply.text(fault.status if fault.status != 200 else 500, fault.error)
    if fault.retry_after is not None:
        reply.headers["Retry-After"] = str(fault.retry_after)
    return reply


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSlack
    # Keep-alive, as aiohttp and httpx expect; idle connections are dropped after a minute.
    protocol_version = "HTTP/1.1"
    timeout = 60
    # The head and the body go out in two writes: without TCP_NODELAY, an answer on a kept-alive
    # connection (slack_sdk's retries reuse theirs) waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test output is no place for an access log

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            reply = self._route()
        except Exception:
            self.fake._error(traceback.format_exc())
            reply = _Reply.json({"ok": False, "error": "fake_slack_error"}, 500)
        if reply.status == 0:  # a "reset" fault: the connection drops, nothing is answered
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (a killed process, a timed-out request): nobody to answer.
            self.close_connection = True

    def _route(self) -> _Reply:
        parts = urlsplit(self.path)
        body = self._read_body()
        head, _, rest = parts.path.lstrip("/").partition("/")
        if head == "api" and rest:
            params: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
            params.update(self._parse_body(body))
            token = params.pop("token", None)
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                token = auth.removeprefix("Bearer ")
            return self.fake._api(rest, params, token)
        if head == "upload" and rest and self.command == "POST":
            return self.fake._upload(rest, self._file_bytes(body))
        if head == "response" and rest and self.command == "POST":
            return self.fake._respond(rest, self._parse_body(body))
        return _Reply.text(404, "not found")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            # Trailer lines, up to the blank line that ends the message.
            while self.rfile.readline().strip():
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def _parse_body(self, body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        kind = self._content_type()
        if kind == "application/json":
            parsed = json.loads(body)
            return parsed if isinstance(parsed, dict) else {"_json": parsed}
        if kind == "multipart/form-data":
            return {name: value for name, value, _ in self._multipart(body)}
        return dict(parse_qsl(body.decode(), keep_blank_values=True))

    def _file_bytes(self, body: bytes) -> bytes:
        # slack_sdk posts the raw bytes; other clients post multipart with one file part.
        if self._content_type() == "multipart/form-data":
            for _, value, is_file in self._multipart(body):
                if is_file:
                    return value
        return body

    def _multipart(self, body: bytes) -> Iterator[tuple[str, Any, bool]]:
        header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(header + body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            assert isinstance(name, str)  # every part the clients send is named
            payload = part.get_payload(decode=True) or b""
            assert isinstance(payload, bytes)  # decode=True: a leaf part's bytes
            if part.get_filename() is not None:
                yield name, payload, True
            else:
                yield name, payload.decode(), False


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A started FakeSlack for one test; ``tests/conftest.py`` offers it to every test."""
    with FakeSlack() as fake:
        yield fake


# ---- the signing driver --------------------------------------------------------------------------

Signature = Literal["valid", "wrong", "missing"]
STALE_SECONDS = 6 * 60  # Slack and Bolt refuse requests older than 5 minutes


class SlackDriver:
    """Sends requests to the app exactly as Slack does: form-encoded, signed with the secret.

    `app_url` is the endpoint; a bare origin gets Bolt's default path `/slack/events`. With
    `fake` given, each command gets its own response_url on that FakeSlack.
    """

    def __init__(
        self,
        app_url: str,
        signing_secret: str,
        *,
        fake: FakeSlack | None = None,
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = app_url if urlsplit(app_url).path not in ("", "/") else _join(app_url)
        self.signing_secret = signing_secret
        self.fake = fake
        self.clock = clock
        self.client = client
        self._counter = itertools.count(1)

    # ---- building

    def sign(
        self,
        body: str,
        *,
        signature: Signature = "valid",
        timestamp: int | None = None,
        stale: bool = False,
    ) -> dict[str, str]:
        """The two headers Slack adds, or a wrong or missing signature on request."""
        ts = int(self.clock()) if timestamp is None else timestamp
        if stale:
            ts -= STALE_SECONDS
        headers = {"X-Slack-Request-Timestamp": str(ts)}
        if signature != "missing":
            secret = self.signing_secret if signature == "valid" else self.signing_secret + "-wrong"
            headers["X-Slack-Signature"] = signature_for(secret, ts, body)
        return headers

    def command_body(
        self,
        text: str,
        *,
        user_id: str = "U_ADMIN",
        user_name: str | None = None,
        channel_id: str = "C_LINKED",
        channel_name: str | None = None,
        team_id: str = TEAM_ID,
        team_domain: str = "fake",
        response_url: str | None = None,
        trigger_id: str | None = None,
        command: str = "/atlas-billing",
    ) -> dict[str, str]:
        """The form fields of a slash command, in Slack's order."""
        n = next(self._counter)
        if response_url is None:
            response_url = (
                self.fake.response_url(f"command-{n}")
                if self.fake is not None
                else f"https://hooks.slack.com/commands/{team_id}/{n}/fake"
            )
        return {
            "token": "fake-verification-token",
            "team_id": team_id,
            "team_domain": team_domain,
            "channel_id": channel_id,
            "channel_name": channel_name or channel_id.lower(),
            "user_id": user_id,
            "user_name": user_name or user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A_FAKE",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": self._trigger(trigger_id or f"{n}.{n}.fake-trigger"),
        }

    def _trigger(self, trigger_id: str) -> str:
        """A trigger Slack issued just now (the fake then knows when it expires)."""
        if self.fake is not None:
            self.fake.issue_trigger(trigger_id)
        return trigger_id

    def request(
        self,
        form: dict[str, str],
        *,
        signature: Signature = "valid",
        timestamp: int | None = None,
        stale: bool = False,
    ) -> httpx.Request:
        body = urlencode(form)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            **self.sign(body, signature=signature, timestamp=timestamp, stale=stale),
        }
        return httpx.Request("POST", self.url, content=body.encode(), headers=headers)

    def command_request(
        self,
        text: str,
        *,
        signature: Signature = "valid",
        timestamp: int | None = None,
        stale: bool = False,
        **fields: Any,
    ) -> httpx.Request:
        form = self.command_body(text, **fields)
        return self.request(form, signature=signature, timestamp=timestamp, stale=stale)

    def event_request(
        self, payload: dict[str, Any], *, signature: Signature = "valid"
    ) -> httpx.Request:
        """An Events API delivery: a signed JSON body (build `payload` with `event_callback`)."""
        body = json.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            **self.sign(body, signature=signature),
        }
        return httpx.Request("POST", self.url, content=body.encode(), headers=headers)

    def action_request(
        self,
        payload: dict[str, Any],
        *,
        signature: Signature = "valid",
        timestamp: int | None = None,
        stale: bool = False,
    ) -> httpx.Request:
        form = {"payload": json.dumps(payload)}
        return self.request(form, signature=signature, timestamp=timestamp, stale=stale)

    # ---- sending

    async def send(self, request: httpx.Request) -> httpx.Response:
        if self.client is not None:
            return await self.client.send(request)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.send(request)

    async def command(self, text: str, **options: Any) -> httpx.Response:
        """POST `/atlas-billing text`; options are `command_body`'s fields and the signing ones."""
        return await self.send(self.command_request(text, **options))

    async def event(self, payload: dict[str, Any], **options: Any) -> httpx.Response:
        """POST an Events API delivery (see `event_callback`)."""
        return await self.send(self.event_request(payload, **options))

    async def action(self, payload: dict[str, Any], **options: Any) -> httpx.Response:
        """POST an interaction payload (block_actions, view_submission, …) as `payload=<json>`."""
        return await self.send(self.action_request(payload, **options))

    def command_sync(self, text: str, **options: Any) -> httpx.Response:
        with httpx.Client(timeout=10) as client:
            return client.send(self.command_request(text, **options))

    def action_sync(self, payload: dict[str, Any], **options: Any) -> httpx.Response:
        with httpx.Client(timeout=10) as client:
            return client.send(self.action_request(payload, **options))


def signature_for(secret: str, timestamp: int | str, body: str | bytes) -> str:
    """Slack's v0 signature: hex HMAC-SHA256 of `v0:{timestamp}:{body}`."""
    text = body.decode() if isinstance(body, bytes) else body
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{text}".encode(), hashlib.sha256)
    return "v0=" + digest.hexdigest()


def block_action(
    action_id: str,
    value: str | None = None,
    *,
    block_id: str = "block",
    user_id: str = "U_ADMIN",
    channel_id: str = "C_LINKED",
    team_id: str = TEAM_ID,
    message_ts: str | None = None,
    response_url: str = "https://hooks.slack.com/actions/T1/1/fake",
) -> dict[str, Any]:
    """A `block_actions` payload for a button click."""
    action: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "block_id": block_id,
        "action_ts": f"{int(test_clock.now().timestamp())}.000000",
    }
    if value is not None:
        action["value"] = value
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": team_id, "domain": "fake"},
        "user": {"id": user_id, "username": user_id.lower(), "team_id": team_id},
        "api_app_id": "A_FAKE",
        "token": "fake-verification-token",
        "trigger_id": "1.1.fake-trigger",
        "channel": {"id": channel_id, "name": channel_id.lower()},
        "response_url": response_url,
        "actions": [action],
        "is_enterprise_install": False,
    }
    if message_ts is not None:
        payload["container"] = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
        }
        payload["message"] = {"type": "message", "ts": message_ts}
    return payload


def view_submission(
    callback_id: str,
    values: dict[str, dict[str, Any]],
    *,
    private_metadata: str = "",
    user_id: str = "U_ADMIN",
    team_id: str = TEAM_ID,
    view_id: str = "V_FAKE",
) -> dict[str, Any]:
    """A `view_submission` payload; `values` is `state.values` (block_id → action_id → value).

    Plain strings are taken as plain-text inputs: `{"b": {"a": "x"}}` becomes
    `{"b": {"a": {"type": "plain_text_input", "value": "x"}}}`.
    """
    state = {
        block: {
            action: ({"type": "plain_text_input", "value": v} if isinstance(v, str) else v)
            for action, v in actions.items()
        }
        for block, actions in values.items()
    }
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": "fake"},
        "user": {"id": user_id, "username": user_id.lower(), "team_id": team_id},
        "api_app_id": "A_FAKE",
        "token": "fake-verification-token",
        "trigger_id": "1.1.fake-trigger",
        "view": {
            "id": view_id,
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": private_metadata,
            "state": {"values": state},
            "hash": "1.fake",
        },
        "response_urls": [],
        "is_enterprise_install": False,
    }


def event_callback(event: dict[str, Any], *, team_id: str = TEAM_ID) -> dict[str, Any]:
    """An Events API delivery of `event` (``channel_archive`` and the like) as Slack wraps it."""
    n = next(_event_ids)
    return {
        "token": "fake-verification-token",
        "team_id": team_id,
        "api_app_id": "A_FAKE",
        "event": {"event_ts": f"{int(test_clock.now().timestamp())}.{n:06d}", **event},
        "type": "event_callback",
        "event_id": f"Ev{n:08d}",
        "event_time": int(test_clock.now().timestamp()),
        "authorizations": [{"team_id": team_id, "user_id": BOT_USER_ID, "is_bot": True}],
    }


_event_ids = itertools.count(1)


def _join(origin: str) -> str:
    return origin.rstrip("/") + "/slack/events"
