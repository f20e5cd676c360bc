"""The bot's Slack Web API client: slack_sdk's, with retries that fit the outbox and the jobs,
the bot's ``User-Agent``, and every failed call counted for ``GET /metrics``."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from prometheus_client import Counter
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import HttpRequest, HttpResponse, RetryState
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.core import version
from bot.core.config import Settings
from bot.core.retry_after import parse_retry_after

# Slack's error strings are short snake_case words; anything else is not used as a label.
_SLACK_ERROR = re.compile(r"[a-z0-9_.]{1,64}")


def slack_error_label(error: object, status: int | None) -> str:
    """Slack's ``error`` string when it is one, else the HTTP status class (``http_5xx``)."""
    if isinstance(error, str) and _SLACK_ERROR.fullmatch(error):
        return error
    if status:
        return f"http_{status // 100}xx"
    return "unknown_error"


class CountingWebClient(AsyncWebClient):
    """``AsyncWebClient`` that counts each failed Web API call in ``errors`` and re-raises.

    ``api_call`` is where every method (``chat_postMessage``, ``users_info``, …) ends,
    after slack_sdk's own retries, so one failed call is counted once. The file upload
    step of ``files_upload_v2`` posts to its upload URL outside ``api_call`` and is
    counted as ``files.upload``.
    """

    def __init__(self, *args: Any, errors: Counter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._errors = errors

    def _count(self, method: str, error: str) -> None:
        self._errors.labels(method=method, error=error).inc()

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        try:
            return await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            response = exc.response
            error = response.get("error") if response is not None else None
            status = getattr(response, "status_code", None)
            self._count(api_method, slack_error_label(error, status))
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._count(api_method, type(exc).__name__)
            raise

    async def _upload_file(self, **kwargs: Any) -> Any:
        try:
            result = await super()._upload_file(**kwargs)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._count("files.upload", type(exc).__name__)
            raise
        if result.status != 200:
            self._count("files.upload", slack_error_label(None, result.status))
        return result


# The longest Retry-After slack_sdk may sleep inside one call. Longer waits are left to the
# caller: the outbox and the poll job reschedule (honouring Retry-After), commands say "try
# again later". Three in-call waits then stay well inside the poll job's 30 s lease and the
# outbox's 120 s one, so a message is never re-claimed by another replica mid-wait.
MAX_INLINE_RETRY_AFTER = 5.0


# Methods that change nothing, or that land in the same state when sent twice: slack_sdk may
# send these again after a connection error, even one that struck after Slack had them.
REPEATABLE = frozenset(
    {
        "auth.test",
        "users.info",
        "usergroups.list",
        "conversations.info",
        "conversations.history",
        "conversations.join",
        "chat.update",
        "views.update",
    }
)


class SafeConnectionErrorRetryHandler(AsyncConnectionErrorRetryHandler):
    """slack_sdk's connection-error retry, only for what surely did not arrive or may repeat.

    slack_sdk retries any call after ``ServerDisconnectedError`` or a reset, also a
    ``chat.postMessage`` whose request Slack had taken before the connection dropped, and
    the same alert is posted twice (python-slack-sdk's ``AsyncConnectionErrorRetryHandler``
    cannot tell the two apart). Here a call is retried when it never reached Slack (the
    connection was never made: ``ClientConnectorError``) or when repeating it is harmless
    (``REPEATABLE``). A post whose answer was lost is left to its caller: the outbox looks the
    message up before it posts again.
    """

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if error is None or not await super()._can_retry_async(
            state=state, request=request, response=response, error=error
        ):
            return False
        if isinstance(error, aiohttp.ClientConnectorError):
            return True
        return request.url.rstrip("/").rsplit("/", 1)[-1] in REPEATABLE


class ShortRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's 429 retry, only for waits of at most ``MAX_INLINE_RETRY_AFTER`` seconds."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        values = {k.lower(): v for k, v in response.headers.items()}.get("retry-after")
        if not values:
            return True  # slack_sdk waits 1 s when Slack names no time
        seconds = parse_retry_after(values[0])
        return seconds is not None and seconds <= MAX_INLINE_RETRY_AFTER


def slack_client(
    settings: Settings, token: str | None = None, *, errors: Counter | None = None
) -> AsyncWebClient:
    """The Web API client with slack_sdk's retry handlers (they are off by default); with
    ``errors`` (``billing_bot_slack_errors_total``), one that counts its failed calls."""
    options: dict[str, Any] = {
        "token": token or settings.SLACK_BOT_TOKEN,
        "base_url": settings.SLACK_API_URL,
        # slack_sdk appends its own, Python's and the OS's product tokens to ours.
        "user_agent_prefix": version.user_agent(),
        "retry_handlers": [
            SafeConnectionErrorRetryHandler(max_retry_count=2),
            ShortRateLimitRetryHandler(max_retry_count=3),
        ],
    }
    if errors is None:
        return AsyncWebClient(**options)
    return CountingWebClient(errors=errors, **options)
