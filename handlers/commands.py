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
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError

from bot.deps import Deps
from bot.render.explain import EXPLAINED, UNEXPECTED, Refusal, explain, slack_error
from bot.services.links import require_admin, slack_refused
from handlers import costs, credentials, grammar, links, settings, spend
from handlers.invocation import Invocation

log = logging.getLogger(__name__)

COMMAND = "/atlas-billing"

Handler = Callable[[Invocation, Any], Awaitable[None]]


HANDLERS: dict[type, Handler] = {
    grammar.Link: links.link,
    grammar.Unlink: links.unlink,
    grammar.Status: links.status,
    grammar.Pending: spend.pending,
    grammar.Invoice: spend.invoice,
    grammar.Costs: costs.costs,
    grammar.Connect: credentials.connect,
    grammar.Threshold: settings.threshold,
    grammar.OnCall: settings.oncall,
    grammar.Digest: settings.digest,
}


# The sub-command name of each parsed command, for the `subcommand` label of the metrics.
SUBCOMMAND_OF: dict[type, str] = {
    form.command: sub.name for sub in grammar.SUBCOMMANDS for form in sub.forms
}


def subcommand_label(text: str) -> str:
    """The sub-command a bad command text was meant for, or ``unknown``: never the text
    itself, so a metric label can only take a few values."""
    words = text.split(maxsplit=1)
    name = words[0].lower() if words else "help"
    return name if name in grammar.NAMES else "unknown"


# Work after the acknowledgement shares the event loop with the acknowledgements of
# later commands. Letting only a few commands work at once keeps a burst of `pending`s
# from starving the acks (bench/ack_latency.py); the others wait their turn.
WORK_AT_ONCE = 4


def register(app: AsyncApp, deps: Deps) -> None:
    work = asyncio.Semaphore(WORK_AT_ONCE)

    async def on_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        try:
            parsed = grammar.parse(command.get("text") or "", today=deps.today())
        except grammar.UsageError as exc:
            deps.metrics.command(subcommand_label(command.get("text") or ""), "usage_error")
            await ack(response_type="ephemeral", text=str(exc))
            return
        if isinstance(parsed, grammar.Help):
            deps.metrics.command("help", "ok")
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
        await deps.background.run(carry_out(invocation, parsed))

    async def carry_out(invocation: Invocation, parsed: grammar.Command) -> None:
        """The work after the acknowledgement; every failure ends as one line to the caller."""
        # `connect` opens a form with a trigger that expires in 3 s: it never waits in line.
        gate = contextlib.nullcontext() if isinstance(parsed, grammar.Connect) else work
        outcome = "failed"  # unless the handler returns or declines: counted in `finally`
        try:
            async with gate:
                if grammar.needs_admin(parsed):
                    await require_admin(deps, invocation.user_id, "change this")
                await HANDLERS[type(parsed)](invocation, parsed)
            outcome = "ok"
        except EXPLAINED as exc:
            outcome = "refused" if isinstance(exc, Refusal) else "failed"
            if isinstance(exc, SlackApiError):
                await slack_refused(
                    deps,
                    team_id=invocation.team_id,
                    channel_id=invocation.channel_id,
                    error=slack_error(exc),
                    method=f"{type(parsed).__name__.lower()} answer",
                )
            await _tell(invocation, explain(exc))
        except Exception:
            log.exception(
                "unexpected error handling /atlas-billing %s", SUBCOMMAND_OF[type(parsed)]
            )
            await _tell(invocation, UNEXPECTED)
        finally:
            deps.metrics.command(SUBCOMMAND_OF[type(parsed)], outcome)

    app.command(COMMAND)(on_command)


async def _tell(invocation: Invocation, text: str) -> None:
    """An ephemeral line to the caller; if even that fails, the log has it."""
    try:
        await invocation.ephemeral(text)
    except Exception:
        log.exception("could not tell the caller: %s", text)
