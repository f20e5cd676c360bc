"""The one place failures become user-facing text: one readable line with a remedy.

Handlers, jobs and the CLI call ``explain``; nobody else words an error.
"""

from __future__ import annotations

import logging
import re

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.slack_response import SlackResponse

from bot.atlas import (
    AtlasAPIError,
    AtlasError,
    AtlasTransportError,
    Forbidden,
    InvalidInput,
    MalformedResponse,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
)
from storage import StorageError

log = logging.getLogger(__name__)

# Slack refusals only the operators can cure (a revoked or mistyped token, a missing scope).
# Work that must not be lost (alerts, digests, cost results) waits for them instead of failing.
AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "missing_scope",
    }
)


def upload_error(exc: SlackRequestError) -> SlackApiError:
    """A failed upload POST of ``files_upload_v2`` as the ``SlackApiError`` callers expect.

    slack_sdk raises ``SlackRequestError("Failed to upload a file (status: 500, …)")`` there,
    with the HTTP status in the message only; the Web API steps raise ``SlackApiError``.
    """
    match = re.search(r"\(status: (\d{3})\b", str(exc))
    response = SlackResponse(
        client=None,
        http_verb="POST",
        api_url="files.upload",
        req_args={},
        data={"ok": False},
        headers={},
        status_code=int(match.group(1)) if match else 0,
    )
    # slack_sdk leaves SlackApiError.__init__ unannotated.
    return SlackApiError(str(exc), response)  # type: ignore[no-untyped-call]


# What the user reads when the bot itself failed: the detail is in the operators' log.
UNEXPECTED = "Something went wrong inside the bot; the error was logged for the operators."


def slack_error(exc: SlackApiError) -> str:
    """Slack's error code for a failed Web API call (`is_archived`, `ratelimited`, …)."""
    response = exc.response
    error = response.get("error") if response is not None else None
    return error if isinstance(error, str) and error else "unknown_error"


class Refusal(Exception):
    """A request the bot declines (not linked, not an admin, …); the message is shown as is."""


# The failures ``explain`` words for a person (a Slack connection that failed included):
# handlers answer these with its line; anything else is unexpected and logged as such.
EXPLAINED: tuple[type[BaseException], ...] = (
    AtlasError,
    StorageError,
    SlackApiError,
    Refusal,
    aiohttp.ClientError,
    TimeoutError,
)


def _code(exc: AtlasAPIError) -> str:
    return f"{exc.status} {exc.error_code or exc.reason or 'error'}"


def _detail(exc: AtlasAPIError) -> str:
    return f" ({exc.detail})" if exc.detail else ""


# What to do about a 401 or 403, by Atlas's `errorCode`: one status has several causes, and a
# remedy that names the wrong one sends people to fix what is not broken (ATLAS-NOTES.md,
# "403 has several causes"). The API access list belongs to each API key or service account;
# once it has an entry, only those addresses may call the Admin API, and an org may require one
# (https://www.mongodb.com/docs/atlas/configure-api-access/, as quoted in
# microsoft/vscode-documentdb #814).
_ACCESS_LIST = (
    "The request came from an address the credentials' API access list does not include: add "
    "the bot's outgoing IP address to the access list of its API key or service account in "
    "Atlas (Organization Access Manager → Applications)."
)
ATLAS_REMEDIES = {
    "IP_ADDRESS_NOT_ON_ACCESS_LIST": _ACCESS_LIST,
    "ORG_REQUIRES_ACCESS_LIST": (
        "This org requires an API access list for the Admin API: give the bot's API key or "
        "service account an access list with the bot's outgoing IP address."
    ),
    "API_KEY_NOT_FOUND": (
        "Atlas knows no such API key (deleted, or mistyped): create one with the Organization "
        "Billing Viewer role and configure it (or `connect` it)."
    ),
}
_DEFAULT_REMEDIES = {
    401: "Check the service account or API key the bot uses for this org (ID, secret, expiry).",
    403: "The bot's credentials need the Organization Billing Viewer role on this org.",
}


def atlas_remedy(exc: AtlasAPIError) -> str:
    """What to do about a 401 or 403, chosen by its ``errorCode`` (else by its status)."""
    remedy = ATLAS_REMEDIES.get(exc.error_code or "")
    return remedy or _DEFAULT_REMEDIES.get(exc.status, "Check the bot's Atlas credentials.")


def explain(exc: BaseException) -> str:
    """One line for a person: what went wrong, the Atlas ``errorCode``, and what to do."""
    if isinstance(exc, Refusal | InvalidInput):
        return str(exc)
    if isinstance(exc, Unauthorized | Forbidden):
        what = "refused the bot's credentials" if exc.status == 401 else "denied access"
        return f"Atlas {what} [{_code(exc)}]{_detail(exc)}. {atlas_remedy(exc)}"
    if isinstance(exc, NotFound):
        return f"Atlas found no such resource [{_code(exc)}]{_detail(exc)}. Check the ID."
    if isinstance(exc, RateLimited):
        wait = f" in {exc.retry_after:.0f} s" if exc.retry_after else " in a minute"
        return f"Atlas is rate limiting this org [{_code(exc)}]. Try again{wait}."
    if isinstance(exc, ServerError):
        return f"Atlas had a server error [{_code(exc)}]{_detail(exc)}. Try again later."
    if isinstance(exc, MalformedResponse):
        return f"Atlas sent an answer the bot cannot read [{_code(exc)}]{_detail(exc)}."
    if isinstance(exc, AtlasAPIError):
        return f"Atlas answered with an error [{_code(exc)}]{_detail(exc)}."
    if isinstance(exc, AtlasTransportError):
        return f"Atlas did not answer: {exc}. Try again later."
    if isinstance(exc, AtlasError):
        return str(exc)
    if isinstance(exc, StorageError):
        return "The bot's database is not answering right now; try again in a minute."
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return "Slack did not answer the bot (the connection failed). Try again in a minute."
    if isinstance(exc, SlackApiError):
        error = slack_error(exc)
        status = exc.response.status_code if exc.response is not None else 0
        if error == "is_archived":
            return "This channel is archived: the bot cannot post here, so its links are disabled."
        if error == "not_in_channel":
            return "I am not a member of this channel: invite me with `/invite @Atlas Billing`."
        if error == "channel_not_found":
            return (
                "I cannot see this channel [channel_not_found]: if it is private, invite me "
                "with `/invite @Atlas Billing`."
            )
        if error in AUTH_ERRORS:
            # The line says it was logged: log it here, so that is true wherever it is shown.
            method = getattr(exc.response, "api_url", "").rsplit("/", 1)[-1]
            log.error("Slack refused the bot's token [%s] on %s", error, method or "a call")
            return (
                f"Slack refused the bot's token [{error}]: the operators must check "
                "SLACK_BOT_TOKEN and the app's scopes. The error was logged."
            )
        if status == 429 or error == "ratelimited":
            return "Slack is rate limiting the bot [ratelimited]. Try again in a minute."
        if status >= 500:
            return f"Slack had a server error [{status}]. Try again in a minute."
        return f"Slack refused the bot's message [{error}]."
    return UNEXPECTED
