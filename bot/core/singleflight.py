"""One answer shared by callers who ask for the same thing at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    """Callers asking for the same thing at the same time share one answer.

    A burst of ``pending`` commands for one org (a channel reacting to an alert) makes one
    Atlas request instead of one each: the first caller's request is awaited by all who
    ask while it is in flight. Nothing is kept once it is answered, so nobody gets an
    answer older than their question; an error reaches every caller sharing it.
    """

    def __init__(self) -> None:
        self._inflight: dict[object, asyncio.Future[Any]] = {}

    async def run(self, key: object, fetch: Callable[[], Awaitable[T]]) -> T:
        shared = self._inflight.get(key)
        # A finished answer stays in the map until its done-callback runs (a later turn of
        # the loop): a caller arriving in between asks anew rather than take that older answer.
        if shared is None or shared.done():
            shared = asyncio.ensure_future(fetch())
            self._inflight[key] = shared
            shared.add_done_callback(lambda _: self._inflight.pop(key, None))
        # shield: one caller giving up (cancelled) does not cancel the others' answer.
        return await asyncio.shield(shared)
