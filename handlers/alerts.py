"""The Acknowledge and Snooze buttons of threshold alerts: record the click, update the alert."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError

from bot.deps import Deps
from bot.render.alerts import ACK_ACTION, SNOOZE_ACTION, acknowledged_message, snoozed_message
from bot.render.explain import UNEXPECTED, explain, slack_error
from bot.services import alerts, links

log = logging.getLogger(__name__)

SNOOZE_FOR = timedelta(hours=24)


def _alert_id(action: dict[str, Any]) -> int | None:
    value = str(action.get("value", ""))
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


NOT_KNOWN = "This alert is not known here any more."


def register(app: AsyncApp, deps: Deps) -> None:
    async def click(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        *,
        snooze: bool,
    ) -> None:
        await ack()
        await deps.background.run(guarded(body, action, respond, snooze=snooze))

    async def guarded(
        body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond, *, snooze: bool
    ) -> None:
        try:
            await record(body, action, respond, snooze=snooze)
        except Exception:
            log.exception("unexpected error handling an alert button")
            await respond(text=UNEXPECTED, response_type="ephemeral", replace_original=False)

    async def record(
        body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond, *, snooze: bool
    ) -> None:
        """Store the click, then show it in the alert (after Slack has its acknowledgement)."""
        alert_id = _alert_id(action)
        user_id = (body.get("user") or {}).get("id", "")
        channel_id = (body.get("channel") or {}).get("id", "")
        message = body.get("message") or {}
        alert = await alerts.alert(deps, alert_id) if alert_id is not None else None
        if alert is None or alert.channel_id != channel_id or not message.get("ts"):
            await respond(text=NOT_KNOWN, response_type="ephemeral", replace_original=False)
            return
        assert alert.id is not None  # read from the database
        now = deps.clock()
        blocks = message.get("blocks") or []
        if snooze:
            until = now + SNOOZE_FOR
            known = await alerts.snooze(deps, alert_id=alert.id, user_id=user_id, until=until)
            updated = snoozed_message(blocks, user_id=user_id, until=until)
        else:
            acked = await alerts.acknowledge(deps, alert_id=alert.id, user_id=user_id, now=now)
            known = acked is not None
            if acked is not None:  # the first acknowledgement stands, whoever clicks later
                user_id, now = acked.acknowledged_by or user_id, acked.acknowledged_at or now
            updated = acknowledged_message(blocks, user_id=user_id, at=now)
        if not known:  # removed (its link was unlinked) since it was read above
            await respond(text=NOT_KNOWN, response_type="ephemeral", replace_original=False)
            return
        try:
            await deps.slack.chat_update(channel=channel_id, ts=message["ts"], **updated.kwargs())
        except SlackApiError as exc:
            # The click is recorded already; only showing it in the message failed.
            team_id = (body.get("team") or {}).get("id", "")
            await links.slack_refused(
                deps,
                team_id=team_id,
                channel_id=channel_id,
                error=slack_error(exc),
                method="alert update",
            )
            await respond(text=explain(exc), response_type="ephemeral", replace_original=False)

    async def on_acknowledge(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await click(ack, body, action, respond, snooze=False)

    async def on_snooze(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await click(ack, body, action, respond, snooze=True)

    app.action(ACK_ACTION)(on_acknowledge)
    app.action(SNOOZE_ACTION)(on_snooze)
