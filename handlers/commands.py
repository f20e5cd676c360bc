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
import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError

from bot.deps import Deps
from bot.render.explain import EXPLAINED, UNEXPECTED, Refusal, explain, slack_error
from bot.services.links import require_admin, slack_refused
from handlers import grammar, subcommands
from handlers.invocation import Invocation

log = logging.getLogger(__name__)

COMMAND = "/atlas-billing"

# Work after the acknowledgement shares the event loop with the acknowledgements of
# later commands. Letting only a few commands work at once keeps a burst of `pending`s
# from starving the acks (bench/ack_latency.py); the others wait their turn.
WORK_AT_ONCE = 4


def register(app: AsyncApp, deps: Deps) -> None:
    work = asyncio.Semaphore(WORK_AT_ONCE)

    async def on_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        try:
            parsed = subcommands.parse(command.get("text") or "", today=deps.today())
        except grammar.UsageError as exc:
            deps.metrics.command(subcommands.label_of(command.get("text") or ""), "usage_error")
            await ack(response_type="ephemeral", text=str(exc))
            return
        if isinstance(parsed, grammar.Help):
            deps.metrics.command("help", "ok")
            await ack(response_type="ephemeral", text=subcommands.help_text(parsed.topic))
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
        await deps.background.run(carry_out(invocation, parsed))

    async def carry_out(invocation: Invocation, parsed: grammar.Command) -> None:
        """The work after the acknowledgement; every failure ends as one line to the caller."""
        sub = subcommands.subcommand_of(parsed)
        # A modal's trigger expires in 3 s: that work never waits in line.
        gate = contextlib.nullcontext() if sub.opens_modal else work
        outcome = "failed"  # unless the handler returns or declines: counted in `finally`
        try:
            async with gate:
                if subcommands.needs_admin(parsed) and not sub.opens_modal:
                    await require_admin(deps, invocation.user_id, invocation.team_id, "change this")
                assert sub.handler is not None, "only `help` has no handler; it is answered above"
                await sub.handler(invocation, parsed)
            outcome = "ok"
        except EXPLAINED as exc:
            outcome = "refused" if isinstance(exc, Refusal) else "failed"
            if isinstance(exc, SlackApiError):
                await slack_refused(
                    deps,
                    team_id=invocation.team_id,
                    channel_id=invocation.channel_id,
                    error=slack_error(exc),
                    method=f"{sub.name} answer",
                )
            await _tell(invocation, explain(exc))
        except Exception:
            log.exception("unexpected error handling /atlas-billing %s", sub.name)
            await _tell(invocation, UNEXPECTED)
        finally:
            deps.metrics.command(sub.name, outcome)

    app.command(COMMAND)(on_command)


async def _tell(invocation: Invocation, text: str) -> None:
    """An ephemeral line to the caller; if even that fails, the log has it."""
    try:
        await invocation.ephemeral(text)
    except Exception:
        log.exception("could not tell the caller: %s", text)
