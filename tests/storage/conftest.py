"""Database fixtures: every storage test runs on SQLite and, when TEST_POSTGRES_URL is set, PostgreSQL.

Each PostgreSQL test gets its own schema (via `search_path` in the URL), created
before and dropped after, so concurrent test runs can share one database.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from storage.db import Database, make_engine, upgrade

PG_SKIP_REASON = "TEST_POSTGRES_URL is not set: PostgreSQL tests skipped"


def postgres_base_url() -> str:
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip(PG_SKIP_REASON)
    return url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    # A directory that does not exist yet: make_engine must create it.
    return f"sqlite:///{tmp_path / 'data' / 'bot.db'}"


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    base = postgres_base_url()
    schema = f"test_storage_{uuid.uuid4().hex[:16]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """An empty database on each engine (SQLite always, PostgreSQL when configured)."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def db(db_url) -> Iterator[Database]:
    """A migrated database (through `upgrade`, never `create_all`)."""
    database = Database(db_url)
    upgrade(database.engine)
    try:
        yield database
    finally:
        database.dispose()


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


def run_together(n: int, fn: Callable[[int], object]) -> list[object]:
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
    return results
