"""The storage exception tree: what the rest of the bot may catch from `storage`.

    StorageError                    base of everything raised on purpose here
    ├── StorageConfigError          the database URL is malformed, unsupported or
    │                               its driver is not installed (also a ValueError)
    ├── StorageUnavailable          the database cannot be reached or opened
    └── AlreadyExists               a row with the same unique key is already stored
                                    (e.g. a digest query for that link and month)

Messages are one line, safe to show an operator (passwords are masked), and
never need the stack trace to be understood.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of the errors `storage` raises on purpose."""


class StorageConfigError(StorageError, ValueError):
    """The database URL cannot be used: malformed, unsupported backend or missing driver."""


class StorageUnavailable(StorageError):
    """The database is configured correctly but cannot be reached or opened right now."""


class AlreadyExists(StorageError):
    """A row with this unique key already exists; the caller's transaction is still usable.

    `key` is the duplicate value (such as `digest:{link}:{YYYY-MM}`).
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key
