"""Slack listeners. ``register(app, deps)`` wires every one of them onto a Bolt app."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp

    from bot.deps import Deps


def register(app: AsyncApp, deps: Deps) -> None:
    from handlers import alerts, channel_events, commands, connect

    commands.register(app, deps)
    alerts.register(app, deps)
    connect.register(app, deps)
    channel_events.register(app, deps)
