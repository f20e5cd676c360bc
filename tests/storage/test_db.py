"""Engine set-up, sessions, `Database.run`, migrations and the storage error tree."""

from __future__ import annotations

import ast
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, Table, inspect, text
from sqlalchemy.exc import StatementError
from sqlmodel import SQLModel, select

import storage
from storage import audit, links
from storage.db import MIGRATION_LOCK_ID, Database, alembic_config, make_engine, upgrade
from storage.errors import StorageConfigError, StorageError, StorageUnavailable
from storage.models import ChannelLink, CostQuery
from storage.revision import next_revision_id
from tests.storage.conftest import run_together, wait_until

ORG = "5f1a2b3c4d5e6f7a8b9c0d1e"
TABLES = {
    "channel_link",
    "cost_query",
    "audit_entry",
    "channel_config",
    "threshold",
    "digest_schedule",
    "alert",
    "outbox",
}


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# --- migrations -------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_and_is_idempotent(db: Database) -> None:
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    assert current_revision(db) == head_revision()
    with db.session() as session:
        links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG, created_by="U1")

    upgrade(db.engine)
    upgrade(db.engine)

    assert current_revision(db) == head_revision()
    with db.session() as session:
        assert [link.org_id for link in links.all_links(session)] == [ORG]


def test_upgrade_accepts_a_url(db_url: str) -> None:
    upgrade(db_url)
    database = Database(db_url)
    try:
        assert current_revision(database) == head_revision()
    finally:
        database.dispose()


def _schema_diff(db: Database, metadata: MetaData) -> list:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, metadata)


def test_migrations_produce_exactly_the_models_schema(db: Database) -> None:
    assert _schema_diff(db, SQLModel.metadata) == []


def test_schema_comparison_notices_drift(db: Database) -> None:
    # Guards the test above: the comparison must see the migrated tables at all.
    drifted = MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(drifted)
    Table("not_migrated", drifted, Column("id", Integer, primary_key=True))
    drifted.tables["cost_query"].append_column(Column("extra", Integer))

    diff = _schema_diff(db, drifted)

    assert ("add_table", "not_migrated") in [(d[0], d[1].name) for d in diff if d[0] == "add_table"]
    assert any(d[0] == "add_column" and d[3].name == "extra" for d in diff)


def test_concurrent_upgrades_do_not_fail(db_url: str) -> None:
    run_together(3, lambda _: upgrade(db_url))
    database = Database(db_url)
    try:
        assert current_revision(database) == head_revision()
        assert set(inspect(database.engine).get_table_names()) >= TABLES
    finally:
        database.dispose()


def test_upgrade_waits_for_the_postgresql_migration_lock(postgresql_url: str) -> None:
    holder = make_engine(postgresql_url)
    database = Database(postgresql_url)
    try:
        with holder.connect() as lock_conn, ThreadPoolExecutor(1) as pool:
            lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
            lock_conn.commit()
            pending = pool.submit(upgrade, database.engine)

            def waiting_on_lock() -> bool:
                with holder.connect() as c:
                    return bool(
                        c.execute(
                            text(
                                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND NOT granted"
                            )
                        ).scalar()
                    )

            wait_until(waiting_on_lock, what="upgrade() to wait for the advisory lock")
            assert "cost_query" not in inspect(database.engine).get_table_names()

            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
            lock_conn.commit()
            pending.result(timeout=30)
        assert current_revision(database) == head_revision()
    finally:
        database.dispose()
        holder.dispose()


def test_next_revision_number_follows_the_head() -> None:
    assert next_revision_id() == f"{int(head_revision()) + 1:04d}"


def test_migrations_ship_as_package_files() -> None:
    migrations = Path(storage.__file__).parent / "migrations"
    for name in ("__init__.py", "env.py", "script.py.mako", "versions/__init__.py"):
        assert (migrations / name).is_file(), name


def test_storage_imports_nothing_from_bot_or_handlers() -> None:
    root = Path(storage.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in ("bot", "handlers")
            ]
    assert offenders == []


# --- engines and sessions ---------------------------------------------------------------------


def test_dialect_names_the_engine(db: Database, db_url: str) -> None:
    assert db.dialect == db_url.split(":")[0].split("+")[0]


def test_sqlite_pragmas(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    try:
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert Path(database.engine.url.database or "").parent.is_dir()
    finally:
        database.dispose()


def test_session_commits_on_success_and_rolls_back_on_error(db: Database) -> None:
    with db.session() as session:
        links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG, created_by="U1")

    with pytest.raises(RuntimeError, match="boom"), db.session() as session:
        links.add_link(session, team_id="T1", channel_id="C2", org_id=ORG, created_by="U1")
        raise RuntimeError("boom")

    with db.session() as session:
        assert [link.channel_id for link in links.all_links(session)] == ["C1"]


def test_models_stay_readable_after_the_session(db: Database) -> None:
    with db.session() as session:
        link, _ = links.add_link(session, team_id="T1", channel_id="C1", org_id=ORG, created_by="U")
    # expire_on_commit=False: attribute access after the commit needs no session.
    assert link.id is not None
    assert (link.org_id, link.created_by) == (ORG, "U")


async def test_run_uses_a_worker_thread_and_commits(db: Database) -> None:
    loop_thread = threading.get_ident()

    def which_thread(session) -> int:
        assert session.in_transaction()
        return threading.get_ident()

    assert await db.run(which_thread) != loop_thread

    link, created = await db.run(
        links.add_link, team_id="T1", channel_id="C1", org_id=ORG, created_by="U1"
    )
    assert created and link.id is not None
    with db.session() as session:
        assert session.get(ChannelLink, link.id) is not None


async def test_run_does_not_block_the_event_loop(db: Database) -> None:
    release = threading.Event()
    ticks = 0

    def slow(session) -> str:
        assert release.wait(timeout=10)
        return "done"

    async def ticker() -> None:
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            if ticks == 3:
                release.set()
            await asyncio.sleep(0)

    result, _ = await asyncio.gather(db.run(slow), ticker())
    assert result == "done" and ticks >= 3


async def test_run_rolls_back_when_fn_raises(db: Database) -> None:
    def add_then_fail(session) -> None:
        audit.record(session, team_id="T1", channel_id="C1", user_id="U1", action="link")
        raise LookupError("nope")

    with pytest.raises(LookupError):
        await db.run(add_then_fail)
    assert await db.run(lambda s: audit.entries(s)) == []


@pytest.mark.parametrize(
    "offset", [timedelta(0), timedelta(hours=5, minutes=30), timedelta(hours=-7)]
)
def test_timestamps_come_back_timezone_aware_utc(db: Database, offset: timedelta) -> None:
    moment = datetime(2025, 1, 31, 23, 59, 58, 123456, tzinfo=timezone(offset))
    with db.session() as session:
        link, _ = links.add_link(
            session, team_id="T1", channel_id="C1", org_id=ORG, created_by="U1", now=moment
        )
    with db.session() as session:
        stored = session.exec(select(ChannelLink).where(ChannelLink.id == link.id)).one()
        assert stored.created_at.tzinfo is UTC
        assert stored.created_at == moment
        assert stored.created_at.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(db: Database) -> None:
    with pytest.raises(StatementError, match="naive datetime"), db.session() as session:
        session.add(
            CostQuery(
                token="t",
                org_id=ORG,
                team_id="T",
                channel_id="C",
                requested_by="U",
                params="{}",
                next_poll_at=datetime(2025, 1, 1),
            )
        )
        session.flush()


def test_sqlite_stores_utc_text_so_sql_comparisons_are_chronological(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    upgrade(database.engine)
    try:
        east = datetime(2025, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=9)))  # 00:00 UTC
        with database.session() as session:
            links.add_link(
                session, team_id="T", channel_id="C", org_id=ORG, created_by="U", now=east
            )
        with database.engine.connect() as conn:
            raw = conn.exec_driver_sql("SELECT created_at FROM channel_link").scalar()
        assert str(raw).startswith("2025-03-01 00:00:00")
    finally:
        database.dispose()


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "invalid database URL"),
        ("postgresql+psycopg://u:secret@h:notaport/db", "invalid database URL"),
        ("mysql://u:secret@h/db", "unsupported database"),
        ("postgresql+psycopg2://u@h/db", "not available"),
        ("postgresql+nosuchdriver://u@h/db", "not available"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite://host/file.db", "invalid database URL"),
    ],
)
def test_unusable_urls_raise_storage_config_error(url: str, needle: str) -> None:
    with pytest.raises(StorageConfigError) as info:
        Database(url)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert "secret" not in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, StorageError)


def test_upgrade_with_a_bad_url_raises_storage_config_error() -> None:
    with pytest.raises(StorageConfigError):
        upgrade("oracle://scott@tiger/db")


def test_bare_postgresql_url_uses_psycopg() -> None:
    engine = make_engine("postgresql://u@127.0.0.1:1/db")
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_unreachable_postgresql_raises_storage_unavailable_quickly() -> None:
    database = Database("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test")
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable) as info:
            upgrade(database.engine)
        with pytest.raises(StorageUnavailable):
            database.ping()
        with pytest.raises(StorageUnavailable), database.session() as session:
            links.all_links(session)
    finally:
        database.dispose()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "127.0.0.1:1" in message and "\n" not in message and "hunter2" not in message


async def test_unreachable_database_surfaces_through_run() -> None:
    database = Database("postgresql+psycopg://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(StorageUnavailable):
            await database.run(links.all_links)
    finally:
        database.dispose()


def test_a_dropped_connection_raises_storage_unavailable_then_recovers(
    postgresql_url: str,
) -> None:
    database = Database(postgresql_url)
    upgrade(database.engine)
    killer = make_engine(postgresql_url)
    try:
        with pytest.raises(StorageUnavailable) as info, database.session() as session:
            # Raw SQL on the session's own connection (sqlmodel's `exec` is typed for ORM statements).
            pid = session.connection().execute(text("SELECT pg_backend_pid()")).scalar_one()
            with killer.begin() as conn:
                assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            links.all_links(session)
        assert "lost the connection" in str(info.value) and "\n" not in str(info.value)

        with database.session() as session:  # the pool replaced the dead connection
            assert links.all_links(session) == []
    finally:
        killer.dispose()
        database.dispose()


def test_sqlite_file_that_cannot_be_created_raises_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageUnavailable) as info:
        Database(f"sqlite:///{blocker / 'sub' / 'bot.db'}")
    assert "\n" not in str(info.value)
