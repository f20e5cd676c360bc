"""What a sub-command handler gets: who asked, where, and how to answer them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_bolt.context.respond.async_respond import AsyncRespond

from bot.deps import Deps
from bot.render.blocks import Message


@dataclass(frozen=True)
class Invocation:
    deps: Deps
    team_id: str
    channel_id: str
    user_id: str
    respond: AsyncRespond
    trigger_id: str | None = None  # lets a handler open a modal (valid for 3 seconds)

    async def ephemeral(self, text: str) -> None:
        """Only the caller sees it (help, status, errors, refusals)."""
        await self.respond(text=text, response_type="ephemeral", replace_original=False)

    async def post(self, message: Message) -> dict[str, Any]:
        """Everyone in the channel sees it (answers about the org)."""
        response = await self.deps.slack.chat_postMessage(
            channel=self.channel_id, **message.kwargs()
        )
        return response.data if isinstance(response.data, dict) else {}
