"""Fixtures shared by the whole suite: the sandbox Atlas and databases.

Database fixtures run on SQLite always and on PostgreSQL when TEST_POSTGRES_URL
is set; each PostgreSQL test gets its own schema (via `search_path` in the URL),
created before and dropped after, so concurrent test runs can share one database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from bot.sandbox import SandboxServer
from storage.db import Database, make_engine, upgrade


@pytest.fixture(scope="session")
def sandbox_session() -> Iterator[SandboxServer]:
    """One sandbox Atlas for the session (seed 1, today's date); use ``sandbox`` in tests."""
    with SandboxServer(seed=1) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_session: SandboxServer) -> SandboxServer:
    """The running sandbox Atlas, with its log, faults, tokens and switches reset."""
    sandbox_session.state.reset()
    return sandbox_session


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
