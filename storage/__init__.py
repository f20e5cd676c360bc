"""Persistence for the bot: SQLModel tables, data-access functions, engine set-up, migrations.

Modules: `models` (tables), `links`, `cost_queries`, `audit` (data access:
`fn(session, *, ...)`, the caller owns the transaction), `db` (`Database`,
`make_engine`, `upgrade`), `errors` (the `StorageError` tree). Imports nothing
from `bot` or `handlers`.
"""

from storage.db import Database, make_engine, upgrade
from storage.errors import StorageConfigError, StorageError, StorageUnavailable

__all__ = [
    "Database",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailable",
    "make_engine",
    "upgrade",
]
