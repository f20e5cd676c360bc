"""Slack listeners. ``register(app, deps)`` wires every one of them onto a Bolt app."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp

    from bot.deps import Deps


def register(app: AsyncApp, deps: Deps) -> None:
    from handlers import alerts, commands, credentials, links

    commands.register(app, deps)
    alerts.register(app, deps)
    credentials.register(app, deps)
    links.register(app, deps)
