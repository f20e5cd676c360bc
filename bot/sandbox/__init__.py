"""A sandbox Atlas Admin API (billing subset) on loopback HTTP, for tests and ``billing-bot shell``."""

from bot.sandbox.data import Credentials, SandboxData, cost_rows
from bot.sandbox.runner import SandboxServer, serve_forever
from bot.sandbox.server import create_app
from bot.sandbox.state import (
    FAULT_KINDS,
    OAUTH_REVOKE,
    OAUTH_TOKEN,
    Fault,
    LoggedRequest,
    SandboxState,
)

__all__ = [
    "FAULT_KINDS",
    "OAUTH_REVOKE",
    "OAUTH_TOKEN",
    "Credentials",
    "Fault",
    "LoggedRequest",
    "SandboxData",
    "SandboxServer",
    "SandboxState",
    "cost_rows",
    "create_app",
    "serve_forever",
]
