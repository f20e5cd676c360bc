"""The one place failures become user-facing text: one readable line with a remedy.

Handlers, jobs and the CLI call ``explain``; nobody else words an error.
"""

from __future__ import annotations

from slack_sdk.errors import SlackApiError

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


class Refusal(Exception):
    """A request the bot declines (not linked, not an admin, …); the message is shown as is."""


def _code(exc: AtlasAPIError) -> str:
    return f"{exc.status} {exc.error_code or exc.reason or 'error'}"


def _detail(exc: AtlasAPIError) -> str:
    return f" ({exc.detail})" if exc.detail else ""


def explain(exc: BaseException) -> str:
    """One line for a person: what went wrong, the Atlas ``errorCode``, and what to do."""
    if isinstance(exc, Refusal | InvalidInput):
        return str(exc)
    if isinstance(exc, Unauthorized):
        return (
            f"Atlas refused the bot's credentials [{_code(exc)}]{_detail(exc)}. "
            "Check the service account or API key the bot uses for this org."
        )
    if isinstance(exc, Forbidden):
        return (
            f"Atlas denied access [{_code(exc)}]{_detail(exc)}. The bot's credentials need the "
            "Organization Billing Viewer role on this org."
        )
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
    if isinstance(exc, SlackApiError):
        error = exc.response.get("error", "unknown_error") if exc.response else "unknown_error"
        if error == "not_in_channel":
            return "I am not a member of this channel: invite me with `/invite @Atlas Billing`."
        return f"Slack refused the bot's message [{error}]."
    return "Something went wrong inside the bot; the error was logged for the operators."
