"""Helpers for the storage tests (the database fixtures live in tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar, cast

import pytest
from sqlalchemy import text

from storage import links
from storage.db import Database
from storage.models import ChannelLink


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


T = TypeVar("T")


def run_together(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run `fn(0) … fn(n-1)` on n threads released at the same moment; re-raise any failure."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    # No thread failed or hung, so every slot now holds that thread's `fn(i)`.
    return cast("list[T]", results)


ORG_A = "5f1a2b3c4d5e6f7a8b9c0d1e"
ORG_B = "60aa00000000000000000001"


def make_link(
    db: Database, *, org_id: str = ORG_A, team_id: str = "T1", channel_id: str = "C1"
) -> ChannelLink:
    """A stored channel link (through `links.add_link`), committed."""
    with db.session() as session:
        link, _ = links.add_link(
            session, team_id=team_id, channel_id=channel_id, org_id=org_id, created_by="U1"
        )
    return link


def blocked_on_lock(db: Database, pids: list[int]) -> bool:
    """True when the first PostgreSQL backend in `pids` is waiting for a row or table lock."""
    if not pids:
        return False
    with db.engine.connect() as conn:
        wait = conn.execute(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": pids[0]},
        ).scalar()
    return wait == "Lock"
