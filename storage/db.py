"""Engines, sessions and migrations: how the bot opens its database (SQLite or PostgreSQL).

Nothing is created at import time: the bot builds one `Database` from its
settings at start-up, runs `upgrade()` once, and hands the `Database` to
whatever needs it. Data-access functions (`storage.links`, ...) take a session
and never commit; `Database.session()` owns the transaction, and
`Database.run()` does the same on a worker thread for async callers.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, Dialect, ExceptionContext, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

from storage.errors import StorageConfigError, StorageError, StorageUnavailable

__all__ = ["MIGRATION_LOCK_ID", "Database", "make_engine", "upgrade"]

P = ParamSpec("P")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Key of the PostgreSQL advisory lock held while migrating, so that replicas starting
# together migrate one after the other. Any fixed signed 64-bit value works; this is
# b"AtlsBill" read as an integer, unlikely to collide with another application's lock.
MIGRATION_LOCK_ID = 0x41746C7342696C6C

SQLITE_BUSY_TIMEOUT_SECONDS = 30
PG_CONNECT_TIMEOUT_SECONDS = 10


def _parse_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise StorageConfigError(
            f"invalid database URL {_mask_password(str(url))!r}: {_first_line(exc)}; expected e.g. "
            "sqlite:///billing-bot.db or postgresql+psycopg://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StorageConfigError(
            f"unsupported database {parsed.drivername!r} in "
            f"{parsed.render_as_string(hide_password=True)!r}: use sqlite:///path/to/file.db "
            "or postgresql+psycopg://user@host/db"
        )
    if parsed.drivername == "postgresql":
        # psycopg 3 is the driver this project ships; SQLAlchemy's bare default is psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _mask_password(url: str) -> str:
    # For URLs SQLAlchemy cannot parse (and so cannot render with the password hidden).
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def make_engine(url: str | URL) -> Engine:
    """An engine for `url`, configured for this project's use of SQLite or PostgreSQL.

    Raises `StorageConfigError` when the URL is malformed, names another backend
    or a driver that is not installed. Connection failures surface later, on first
    use, as `StorageUnavailable`.
    """
    parsed = _parse_url(url)
    safe = parsed.render_as_string(hide_password=True)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in parsed.query:
                connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_SECONDS
            engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (NoSuchModuleError, ImportError) as exc:
        raise StorageConfigError(
            f"database driver for {parsed.drivername!r} is not available ({_first_line(exc)}); "
            "use sqlite:///path/to/file.db or postgresql+psycopg://user@host/db"
        ) from None
    except ArgumentError as exc:
        raise StorageConfigError(f"invalid database URL {safe!r}: {_first_line(exc)}") from None

    @event.listens_for(engine, "do_connect")
    def _connect(
        dialect: Dialect,
        conn_rec: ConnectionPoolEntry,
        cargs: tuple[Any, ...],
        cparams: dict[str, Any],
    ) -> DBAPIConnection:
        # Turn "cannot connect" into one readable line; SQLAlchemy would otherwise raise
        # a driver error with a multi-line message and a link to its FAQ.
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.Error as exc:
            raise StorageUnavailable(
                f"cannot connect to the database at {safe}: {_first_line(exc)}"
            ) from exc

    @event.listens_for(engine, "handle_error")
    def _disconnected(context: ExceptionContext) -> StorageUnavailable | None:
        # The connection dropped mid-session (server restart, failover): the pool
        # discards it as usual; the caller sees one line instead of a driver error.
        # Pre-ping failures are left alone: SQLAlchemy reconnects by itself then.
        if context.is_disconnect and not context.is_pre_ping:
            return StorageUnavailable(
                f"lost the connection to the database at {safe}: "
                f"{_first_line(context.original_exception)}"
            )
        return None

    return engine


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:"):
        raise StorageConfigError(
            "in-memory SQLite is not supported (every connection would see its own empty "
            "database); use a file such as sqlite:///billing-bot.db"
        )
    if not database.startswith("file:"):
        parent = Path(database).expanduser().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot create the directory {str(parent)!r} for the SQLite database: "
                f"{exc.strerror or exc}"
            ) from None
    engine = create_engine(
        url,
        # Sessions run on worker threads (Database.run); the pool hands a connection to
        # one thread at a time, so sharing across threads is safe.
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(
        dbapi_connection: sqlite3.Connection, connection_record: ConnectionPoolEntry
    ) -> None:
        # Take transaction control away from the sqlite3 module (it would skip BEGIN
        # before SELECT and SAVEPOINT); SQLAlchemy's "begin" event below emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front. With a deferred BEGIN, a transaction
        # that reads and then writes fails at once with SQLITE_BUSY (no busy wait) when
        # another connection wrote in between; taking the lock first makes every
        # transaction wait its turn instead, which is what a read-modify-write such as
        # claim_due or add_link needs.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    # WAL lets readers work while one connection writes. The mode is stored in the
    # file, so only the first connection ever switches it; that switch needs an
    # exclusive lock and SQLite reports "locked" at once, without waiting for the busy
    # timeout, when another connection is switching at the same moment: retry then.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Database:
    """The bot's database: an engine plus transaction-scoped sessions.

    >>> db = Database("sqlite:///billing-bot.db")
    >>> upgrade(db.engine)
    >>> with db.session() as session:
    ...     links.add_link(session, team_id=..., ...)
    >>> await db.run(links.links_for_channel, team_id="T1", channel_id="C1")
    """

    def __init__(self, url: str | URL) -> None:
        self.engine: Engine = make_engine(url)

    @property
    def dialect(self) -> str:
        """`"sqlite"` or `"postgresql"`."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The database URL with any password masked (for logs)."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on error.

        Objects stay readable after the block (`expire_on_commit=False`), so the
        models a data-access function returns can be handed to other code.
        """
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(session, *args, **kwargs)` in its own transaction, on a worker thread.

        The event loop never waits on the database; the result is returned once the
        transaction has committed.
        """
        return await asyncio.to_thread(self._call, fn, *args, **kwargs)

    def _call(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with self.session() as session:
            return fn(session, *args, **kwargs)

    def ping(self) -> None:
        """Check the database answers; raises `StorageUnavailable` if it does not."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def upgrade(self) -> None:
        """Apply pending migrations (see `upgrade`)."""
        upgrade(self.engine)

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, or in tests)."""
        self.engine.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code (no alembic.ini), optionally bound to `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Revision files are named 0001_initial.py, 0002_... (see storage.revision).
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url_or_engine: str | URL | Engine) -> None:
    """Apply every pending migration, up to head; a no-op when the schema is current.

    Safe to call from several processes at once: on PostgreSQL it holds a
    session-level advisory lock for the whole upgrade, on SQLite the migration runs
    in one `BEGIN IMMEDIATE` transaction. Raises `StorageUnavailable` if the
    database cannot be reached.
    """
    owned = not isinstance(url_or_engine, Engine)
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                _upgrade_postgresql(conn)
            else:
                _upgrade_sqlite(conn)
    finally:
        if owned:
            engine.dispose()


def _upgrade_postgresql(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_ID})
    conn.commit()  # the lock is session-level: it outlives this transaction
    try:
        with conn.begin():
            command.upgrade(alembic_config(conn), "head")
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_ID})
        conn.commit()


def _upgrade_sqlite(conn: Connection) -> None:
    # Batch migrations rebuild tables (create a copy, drop the original, rename); with
    # foreign keys enforced, dropping a referenced table would cascade or fail. The
    # pragma is a no-op inside a transaction, so set it on the raw connection first.
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        with conn.begin():
            command.upgrade(alembic_config(conn), "head")
            problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise StorageError(f"migration left rows violating foreign keys: {problems[:5]}")
    finally:
        raw.execute("PRAGMA foreign_keys = ON")
