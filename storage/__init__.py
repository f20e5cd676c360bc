"""Persistence for the bot: SQLModel tables, data-access functions, engine set-up, migrations.

Modules: `models` (tables); data access as `fn(session, *, ...)`, never
committing (the caller owns the transaction): `links`, `channel_config`,
`thresholds`, `digests` (schedules), `alerts`, `outbox`, `costs` (Cost Explorer queries),
`credentials`, `audit`; `db`
(`Database`, `make_engine`, `upgrade`); `errors` (the `StorageError` tree).
Imports nothing from `bot` or `handlers`.
"""

from storage.db import Database, make_engine, upgrade
from storage.errors import AlreadyExists, StorageConfigError, StorageError, StorageUnavailable

__all__ = [
    "AlreadyExists",
    "Database",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailable",
    "make_engine",
    "upgrade",
]
