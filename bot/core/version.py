"""The bot's version, in one place: the installed package's metadata (``pyproject.toml``).

``billing-bot --version`` prints it, and the Atlas and Slack clients send it in their
``User-Agent`` so either platform's support can tell which release made a request.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "atlas-billing-bot"
PRODUCT = "atlas-billing-bot"


def version() -> str:
    """The installed version; ``0+unknown`` when the code runs without being installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def user_agent() -> str:
    """``atlas-billing-bot/<version>``, the product token of every request the bot sends."""
    return f"{PRODUCT}/{version()}"
