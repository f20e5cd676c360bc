"""Fixtures shared by the whole suite: the sandbox Atlas and databases.

Database fixtures run on SQLite always and on PostgreSQL when TEST_POSTGRES_URL
is set; each PostgreSQL test gets its own schema (via `search_path` in the URL),
created before and dropped after, so concurrent test runs can share one database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy.engine import make_url

from bot.sandbox import SandboxServer
from storage.db import Database, make_engine, upgrade
from tests.fakes import clock
from tests.fakes.slack import fake_slack  # noqa: F401  (the one fake Slack fixture, for every test)


def pytest_report_header() -> str:
    source = f"{clock.ENV}={clock.TODAY}" if os.environ.get(clock.ENV) else "the real date"
    return f"as of {clock.TODAY:%Y-%m-%d} ({source}; set {clock.ENV}=YYYY-MM-DD for another day)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "dates: date-sensitive; .ci/run also runs these as of month edges and 29 Feb"
    )
    config.addinivalue_line(
        "markers",
        "as_of(day): the test runs as of that day (1-31, 'last' or 'today') of TODAY's month",
    )


@pytest.fixture(autouse=True)
def test_day(request: pytest.FixtureRequest) -> Iterator[date]:
    """The running test's day: ``TODAY``, or the day of ``TODAY``'s month its ``as_of`` names."""
    marker = request.node.get_closest_marker("as_of")
    named = marker.kwargs["day"] if marker else "today"
    day = clock.TODAY if named == "today" else clock.day_of(named)
    clock.set_today(day)
    try:
        yield day
    finally:
        clock.set_today(clock.TODAY)


@pytest.fixture(scope="session")
def sandbox_session() -> Iterator[SandboxServer]:
    """One sandbox Atlas for the session (seed 1); use ``sandbox`` in tests."""
    with SandboxServer(seed=1, today=clock.TODAY) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_session: SandboxServer, test_day: date) -> SandboxServer:
    """The running sandbox Atlas as of the test's day, its log, faults, tokens and switches reset."""
    sandbox_session.state.reset()
    if sandbox_session.data.today != test_day:
        sandbox_session.data.set_today(test_day)
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
