"""Shared steps of the end-to-end tests: a replica with a settable clock, waiting on the database."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from bot.deps import Deps
from tests.fakes.clock import Clock

T = TypeVar("T")


def replica_with_clock(bot, start: datetime | None = None) -> tuple[Deps, Clock]:
    replica = bot.replica()
    clock = Clock(start or replica.clock())
    return dataclasses.replace(replica, clock=clock), clock


async def eventually(predicate: Callable[[], T], *, timeout: float = 10.0, what: str = "") -> T:
    """Poll `predicate` (a database read, say) until it is truthy; fail after `timeout` s.

    For conditions the fake Slack cannot wake on: its `wait_for` re-checks only when Slack
    is called, so a row written after the last call would be seen only at the time-out.
    """
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)
    return result
