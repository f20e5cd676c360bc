"""Shared steps of the end-to-end tests: a replica with a settable clock, waiting on the database."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from bot.deps import Deps


class Clock:
    """A settable clock for a replica: tests move it past stored due times."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def replica_with_clock(bot, start: datetime | None = None) -> tuple[Deps, Clock]:
    replica = bot.replica()
    clock = Clock(start or replica.clock())
    return dataclasses.replace(replica, clock=clock), clock
