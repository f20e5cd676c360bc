"""Encryption at rest for stored Atlas credentials: the Fernet key and where it comes from.

``BOT_SECRET_KEY`` is the key. When it is not set, one is generated on first
need into ``.billing-bot-secret-key`` (mode 0600) in the data directory, next to
the SQLite file (the working directory for PostgreSQL), and reused afterwards.
Neither a key nor a secret is ever logged or put in an exception message; a key
is named by its ``key_id``, a short fingerprint stored with each ciphertext. Each
key and decrypted secret is registered with ``bot.runtime.logs`` so that, should one reach
a log line anyway (inside a library's message, say), it is redacted there.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken

from bot.core.redaction import register_secret

if TYPE_CHECKING:
    from bot.core.config import Settings

log = logging.getLogger(__name__)

KEY_FILE_NAME = ".billing-bot-secret-key"
MAX_ROTATION_PASSES = 10
MAKE_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class SecretError(Exception):
    """A key is malformed or missing, or is not the key a secret was encrypted with.

    The message is one line that says what to do; it never contains a key or a secret.
    """


def key_fingerprint(key: str) -> str:
    """The key's ``key_id``: the first 8 hex digits of its SHA-256 (says nothing useful about it)."""
    return hashlib.sha256(key.encode("ascii", "replace")).hexdigest()[:8]


class SecretBox:
    """Encrypts and decrypts short secrets with one Fernet key.

    ``source`` names where the key came from (``BOT_SECRET_KEY``, a key file,
    ``--new-key``), so errors can say which one to fix.
    """

    def __init__(self, key: str, *, source: str = "BOT_SECRET_KEY") -> None:
        key = key.strip()
        try:
            self._fernet = Fernet(key.encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError, binascii.Error):
            raise SecretError(
                f"{source} is not a Fernet key (32 url-safe base64-encoded bytes); "
                f"make one with: {MAKE_KEY}"
            ) from None
        register_secret(key)  # whichever key it is (configured, generated, --new-key)
        self.key_id = key_fingerprint(key)
        self.source = source

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r}, source={self.source!r})"

    def encrypt(self, plaintext: str) -> bytes:
        """The Fernet token of ``plaintext`` (random IV: equal secrets give different tokens)."""
        register_secret(plaintext)  # a secret typed in at run time (`connect`) is one too
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        """The secret back; ``SecretError`` if this key did not encrypt it (or it was altered)."""
        try:
            secret = self._fernet.decrypt(bytes(token)).decode("utf-8")
        except (InvalidToken, UnicodeDecodeError):
            raise SecretError(
                f"a stored secret cannot be decrypted with {self.source} (key id {self.key_id}): "
                "it was encrypted with another key or altered; set BOT_SECRET_KEY to the key the "
                "credentials were stored with (after `billing-bot secrets rotate`, the new key)"
            ) from None
        # From now on the plaintext exists in this process: keep it out of every log line.
        register_secret(secret)
        return secret


# ---- where the key comes from ----------------------------------------------------------------


def data_directory(database_url: str) -> Path:
    """Where the bot keeps its files: the SQLite file's directory, else the working directory."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(database_url)
    except ArgumentError:
        return Path.cwd()
    database = url.database or ""
    is_file = database not in ("", ":memory:") and not database.startswith("file:")
    if url.get_backend_name() == "sqlite" and is_file:
        return Path(database).expanduser().absolute().parent
    return Path.cwd()


def key_file(settings: Settings, data_dir: Path | None = None) -> Path:
    """The generated key's file for these settings (it may not exist yet)."""
    return (data_dir or data_directory(settings.DATABASE_URL)) / KEY_FILE_NAME


def load_key(settings: Settings, data_dir: Path | None = None) -> tuple[str, str] | None:
    """The current key and where it came from (``BOT_SECRET_KEY`` or the key file), if any.

    Creates nothing; ``SecretError`` when the key file holds something else than a key.
    """
    if settings.BOT_SECRET_KEY:
        return settings.BOT_SECRET_KEY, "BOT_SECRET_KEY"
    path = key_file(settings, data_dir)
    key = _read_key_file(path)
    return (key, str(path)) if key is not None else None


def load_or_create_key(settings: Settings, data_dir: Path | None = None) -> str:
    """``BOT_SECRET_KEY``, else the key file's key, else a new key written to the key file.

    Generating logs one warning saying where the file is. Two processes starting
    together end up with the same key: the file is published atomically and the
    loser reads the winner's.
    """
    if settings.BOT_SECRET_KEY:
        return settings.BOT_SECRET_KEY
    path = key_file(settings, data_dir)
    existing = _read_key_file(path)
    if existing is not None:
        log.info("BOT_SECRET_KEY is not set: using the generated key in %s", path)
        return existing
    key = Fernet.generate_key().decode("ascii")
    won = _publish(path, key)
    if not won:
        existing = _read_key_file(path)
        if existing is None:  # pragma: no cover - the other writer's file vanished again
            raise SecretError(f"the key file {path} appeared and vanished; start the bot again")
        return existing
    log.warning(
        "BOT_SECRET_KEY is not set: generated a key for the stored Atlas credentials in %s "
        "(mode 0600). Keep it with the database and back it up: without it the stored "
        "credentials are lost. With several replicas, set BOT_SECRET_KEY to one key for all "
        "of them instead.",
        path,
    )
    return key


def write_key_file(path: Path, key: str) -> None:
    """Replace the key file's key atomically (after a rotation), mode 0600."""
    SecretBox(key, source="the new key")
    tmp = _write_private(path.parent, path.name, key)
    os.replace(tmp, path)


def _read_key_file(path: Path) -> str | None:
    try:
        key = path.read_text(encoding="ascii").strip()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(
            f"cannot read the key file {path} ({getattr(exc, 'strerror', None) or exc}); "
            "fix its permissions, or set BOT_SECRET_KEY to the key it held"
        ) from None
    SecretBox(key, source=f"the key file {path}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the key file %s can be read by other users; restrict it with: chmod 600 %s", path, path
        )
    return key


def _write_private(directory: Path, name: str, key: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key + "\n")
        out.flush()
        os.fsync(out.fileno())
    return tmp


def _publish(path: Path, key: str) -> bool:
    """Write ``key`` to ``path`` unless a file is already there; True if this call wrote it."""
    try:
        tmp = _write_private(path.parent, path.name, key)
    except OSError as exc:
        raise SecretError(
            f"cannot write the key file {path} ({exc.strerror or exc}); "
            "set BOT_SECRET_KEY instead, or make the data directory writable"
        ) from None
    try:
        # A hard link publishes the complete file in one step and fails if one exists,
        # so a concurrent reader never sees a half-written key.
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
