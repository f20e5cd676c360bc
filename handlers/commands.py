"""The ``/atlas-billing`` slash command: parse, acknowledge, check who may run it, dispatch.

Bad input is answered in the acknowledgement itself (ephemeral, nothing sent to
Atlas). Everything else is acknowledged at once and done afterwards, so Slack
always hears back within its 3 seconds. Expected failures (Atlas, database,
Slack, refusals) become one readable line for the caller via ``explain``; the
unexpected reach the app's error handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError

from bot.atlas import AtlasError
from bot.channels import require_admin
from bot.deps import Deps
from bot.explain import Refusal, explain
from handlers import connect as connect_handler
from handlers import costs as costs_handler
from handlers import grammar, links, settings, spend
from handlers.invocation import Invocation
from storage import StorageError

COMMAND = "/atlas-billing"

Handler = Callable[[Invocation, Any], Awaitable[None]]


HANDLERS: dict[type, Handler] = {
    grammar.Link: links.link,
    grammar.Unlink: links.unlink,
    grammar.Status: links.status,
    grammar.Pending: spend.pending,
    grammar.Invoice: spend.invoice,
    grammar.Costs: costs_handler.costs,
    grammar.Connect: connect_handler.connect,
    grammar.Threshold: settings.threshold,
    grammar.OnCall: settings.oncall,
    grammar.Digest: settings.digest,
}

EXPECTED = (AtlasError, StorageError, SlackApiError, Refusal)

# Work after the acknowledgement shares the event loop with the acknowledgements of
# later commands. Letting only a few commands work at once keeps a burst of `pending`s
# from starving the acks (bench/ack_latency.py); the others wait their turn.
WORK_AT_ONCE = 4


def register(app: AsyncApp, deps: Deps) -> None:
    work = asyncio.Semaphore(WORK_AT_ONCE)

    async def on_command(ack, command, respond) -> None:
        try:
            parsed = grammar.parse(command.get("text") or "", today=deps.today())
        except grammar.UsageError as exc:
            await ack(response_type="ephemeral", text=str(exc))
            return
        if isinstance(parsed, grammar.Help):
            await ack(response_type="ephemeral", text=grammar.help_text(parsed.topic))
            return
        await ack()
        invocation = Invocation(
            deps=deps,
            team_id=command.get("team_id", ""),
            channel_id=command.get("channel_id", ""),
            user_id=command.get("user_id", ""),
            respond=respond,
            trigger_id=command.get("trigger_id"),
        )
        # `connect` opens a form with a trigger that expires in 3 s: it never waits in line.
        gate = contextlib.nullcontext() if isinstance(parsed, grammar.Connect) else work
        try:
            async with gate:
                if grammar.needs_admin(parsed):
                    await require_admin(deps, invocation.user_id, "change this")
                await HANDLERS[type(parsed)](invocation, parsed)
        except EXPECTED as exc:
            await invocation.ephemeral(explain(exc))

    app.command(COMMAND)(on_command)
