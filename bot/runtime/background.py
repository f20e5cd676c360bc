"""Work a Slack listener hands off once it has acknowledged the request.

Bolt's own way of going on after ``ack()`` (``process_before_response=False``)
starts the listener as a task and then polls every 10 ms for the acknowledgement,
so every answer Slack waits for is held up to 10 ms more, on a loop busy with
other work often longer (bench/ack_latency.py). The app runs listeners inline
instead: a listener acknowledges, hands the rest of its work to ``Background``
and returns, and the acknowledgement leaves at once.

In the shell the work is awaited in place (``inline=True``), so each typed line
is finished before the next one is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """Runs handed-off work as tasks it keeps (so none is collected half done) until done."""

    def __init__(self, *, inline: bool = False) -> None:
        self.inline = inline
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Start `work` (or, inline, finish it) and return; `work` handles its own errors."""
        if self.inline:
            await work
            return
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Let work in flight finish, for at most `timeout` seconds (a graceful stop)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
