"""Channel membership: what the bot may do in a channel it was never invited to.

With ``chat:write.public`` the bot posts in any public channel without joining it, but Slack
answers ``not_in_channel`` to everything else there: reading its history, sharing a file in it
(https://api.slack.com/scopes/chat:write.public; https://api.slack.com/methods/conversations.history:
"bot tokens … must be a member"). ``conversations.join`` (scope ``channels:join``) lets the bot
join a *public* channel by itself; a private one it must be invited to.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError

from bot.deps import Deps
from bot.render.explain import slack_error

log = logging.getLogger(__name__)

T = TypeVar("T")


async def join(deps: Deps, channel_id: str) -> bool:
    """Join a public channel; False (logged) when Slack will not let the bot in by itself."""
    try:
        await deps.slack.conversations_join(channel=channel_id)
    except SlackApiError as exc:
        # method_not_supported_for_channel_type (private), missing_scope, is_archived, …
        log.warning("could not join channel %s: %s", channel_id, slack_error(exc))
        return False
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("could not join channel %s: %s", channel_id, type(exc).__name__)
        return False
    log.info("joined channel %s to work in it", channel_id)
    return True


async def as_member(deps: Deps, channel_id: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``; if Slack answers ``not_in_channel``, join the channel and call it once more.

    When the bot cannot join, the first refusal is raised, for the caller to explain.
    """
    try:
        return await call()
    except SlackApiError as exc:
        if slack_error(exc) != "not_in_channel" or not await join(deps, channel_id):
            raise
    return await call()
