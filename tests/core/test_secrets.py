"""Encryption at rest: the Fernet box, the generated key file, rotation and ``secrets rotate``."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bot.core.config import Settings
from bot.core.secrets import (
    KEY_FILE_NAME,
    SecretBox,
    SecretError,
    key_fingerprint,
    load_key,
    load_or_create_key,
)
from bot.services.credentials import rotate
from storage import credentials
from storage.db import Database
from storage.models import OrgCredential
from tests.storage.conftest import ORG_A, ORG_B, run_together

SECRET_A = "mdb_sa_sk_0123456789abcdef0123456789abcdef01234567"
SECRET_B = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


def _settings(database_url: str, **values) -> Settings:
    return Settings(_env_file=None, DATABASE_URL=database_url, **values)


# ---- the box ---------------------------------------------------------------------------------


def test_a_box_round_trips_and_its_tokens_hide_the_secret() -> None:
    box = SecretBox(OLD_KEY)
    token = box.encrypt(SECRET_A)
    assert SECRET_A.encode() not in token and token != box.encrypt(SECRET_A)  # random IV
    assert box.decrypt(token) == SECRET_A
    assert box.key_id == key_fingerprint(OLD_KEY) and len(box.key_id) == 8
    assert SecretBox(NEW_KEY).key_id != box.key_id
    assert OLD_KEY not in repr(box)


def test_the_wrong_key_is_a_clear_error_that_reveals_nothing() -> None:
    token = SecretBox(OLD_KEY).encrypt(SECRET_A)
    with pytest.raises(SecretError) as caught:
        SecretBox(NEW_KEY).decrypt(token)
    message = str(caught.value)
    assert "set BOT_SECRET_KEY to the key the credentials were stored with" in message
    assert SecretBox(NEW_KEY).key_id in message
    for secret in (SECRET_A, OLD_KEY, NEW_KEY):
        assert secret not in message
    with pytest.raises(SecretError, match="altered"):
        SecretBox(OLD_KEY).decrypt(token[:-4] + b"AAAA")


@pytest.mark.parametrize(
    "bad",
    ["", "short", "x" * 44, OLD_KEY[:-2], "é" * 44],
    ids=["empty", "short", "not-base64", "truncated-key", "not-ascii"],
)
def test_a_malformed_key_is_refused_with_the_form_it_must_take(bad: str) -> None:
    with pytest.raises(SecretError, match="not a Fernet key") as caught:
        SecretBox(bad, source="--new-key")
    assert str(caught.value).startswith("--new-key is not a Fernet key")
    assert "Fernet.generate_key()" in str(caught.value)


# ---- the key: BOT_SECRET_KEY or the generated file -------------------------------------------


def test_bot_secret_key_wins_and_no_file_is_written(tmp_path: Path) -> None:
    settings = _settings(f"sqlite:///{tmp_path / 'bot.db'}", BOT_SECRET_KEY=OLD_KEY)
    assert load_or_create_key(settings) == OLD_KEY
    assert load_key(settings) == (OLD_KEY, "BOT_SECRET_KEY")
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_a_key_is_generated_next_to_the_sqlite_file_once_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(f"sqlite:///{tmp_path / 'data' / 'bot.db'}")
    path = tmp_path / "data" / KEY_FILE_NAME
    assert load_key(settings) is None
    with caplog.at_level(logging.INFO, logger="bot.core.secrets"):
        key = load_or_create_key(settings)
        again = load_or_create_key(settings)
    assert again == key and SecretBox(key).key_id
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert "set BOT_SECRET_KEY" in warnings[0].getMessage()
    assert all(key not in r.getMessage() for r in caplog.records)
    assert load_key(settings) == (key, str(path))
    assert list(path.parent.glob("*.tmp")) == []


def test_without_a_sqlite_file_the_key_goes_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    key = load_or_create_key(_settings("postgresql+psycopg://bot@db.internal/billing"))
    assert (tmp_path / KEY_FILE_NAME).read_text().strip() == key


def test_replicas_starting_together_share_one_generated_key(tmp_path: Path) -> None:
    settings = _settings(f"sqlite:///{tmp_path / 'bot.db'}")
    keys = run_together(8, lambda _: load_or_create_key(settings))
    assert len(set(keys)) == 1
    assert (tmp_path / KEY_FILE_NAME).read_text().strip() == keys[0]


def test_a_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("not a key\n")
    settings = _settings(f"sqlite:///{tmp_path / 'bot.db'}")
    with pytest.raises(SecretError, match=f"the key file {tmp_path / KEY_FILE_NAME} is not"):
        load_or_create_key(settings)


# ---- rotation --------------------------------------------------------------------------------


def _store(db: Database, org_id: str, secret: str, key: str) -> None:
    box = SecretBox(key)
    with db.session() as session:
        credentials.set_credential(
            session,
            org_id=org_id,
            kind="service_account",
            public_id="mdb_sa_id_" + "0" * 24,
            ciphertext=box.encrypt(secret),
            key_id=box.key_id,
            updated_by="U_ADMIN",
        )


def _rows(db: Database) -> dict[str, OrgCredential]:
    with db.session() as session:
        return {row.org_id: row for row in credentials.all_credentials(session)}


def _assert_all_under(db: Database, key: str, expected: dict[str, str]) -> None:
    box, other = SecretBox(key), SecretBox(OLD_KEY if key != OLD_KEY else NEW_KEY)
    rows = _rows(db)
    assert {org: box.decrypt(row.ciphertext) for org, row in rows.items()} == expected
    assert {row.key_id for row in rows.values()} == {box.key_id}
    for row in rows.values():
        with pytest.raises(SecretError):
            other.decrypt(row.ciphertext)


def test_rotate_re_encrypts_every_credential_under_the_new_key(db: Database) -> None:
    _store(db, ORG_A, SECRET_A, OLD_KEY)
    _store(db, ORG_B, SECRET_B, OLD_KEY)
    assert rotate(db, OLD_KEY, NEW_KEY) == 2
    _assert_all_under(db, NEW_KEY, {ORG_A: SECRET_A, ORG_B: SECRET_B})
    assert {row.version for row in _rows(db).values()} == {1}
    assert rotate(db, OLD_KEY, NEW_KEY) == 0  # nothing left to do


class Crashing:
    """The database as ``rotate`` sees it, with a hook run as each session starts."""

    def __init__(self, db: Database, hook) -> None:
        self.db, self.hook, self.sessions = db, hook, 0

    @contextmanager
    def session(self) -> Iterator:
        self.sessions += 1
        self.hook(self.sessions)
        with self.db.session() as session:
            yield session


def test_an_interrupted_rotation_resumes_where_it_stopped(db: Database) -> None:
    _store(db, ORG_A, SECRET_A, OLD_KEY)
    _store(db, ORG_B, SECRET_B, OLD_KEY)

    def crash_on_third(n: int) -> None:  # 1: read the rows, 2: first row, 3: second row
        if n == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate(Crashing(db, crash_on_third), OLD_KEY, NEW_KEY)  # type: ignore[arg-type]
    rows = _rows(db)
    assert rows[ORG_A].key_id == SecretBox(NEW_KEY).key_id
    assert rows[ORG_B].key_id == SecretBox(OLD_KEY).key_id

    assert rotate(db, OLD_KEY, NEW_KEY) == 1
    _assert_all_under(db, NEW_KEY, {ORG_A: SECRET_A, ORG_B: SECRET_B})


def test_a_connect_during_the_rotation_is_not_overwritten(db: Database) -> None:
    _store(db, ORG_A, SECRET_A, OLD_KEY)

    def connect_meanwhile(n: int) -> None:
        if n == 2:  # after the rotation read ORG_A, before it writes it back
            _store(db, ORG_A, SECRET_B, OLD_KEY)

    assert rotate(Crashing(db, connect_meanwhile), OLD_KEY, NEW_KEY) == 1  # type: ignore[arg-type]
    _assert_all_under(db, NEW_KEY, {ORG_A: SECRET_B})
    assert _rows(db)[ORG_A].version == 2


def test_a_row_under_an_unknown_key_stops_the_rotation_before_any_change(db: Database) -> None:
    third = Fernet.generate_key().decode()
    _store(db, ORG_A, SECRET_A, OLD_KEY)
    _store(db, ORG_B, SECRET_B, third)
    with pytest.raises(SecretError, match=f"{ORG_B}.*neither the current key") as caught:
        rotate(db, OLD_KEY, NEW_KEY)
    assert all(k not in str(caught.value) for k in (OLD_KEY, NEW_KEY, third, SECRET_B))
    assert _rows(db)[ORG_A].key_id == SecretBox(OLD_KEY).key_id


# ---- billing-bot secrets rotate --------------------------------------------------------------


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MONGODB_ATLAS_", "SLACK_", "BOT_")) and name != "DATABASE_URL"
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", "secrets", "rotate", *args],
        env={**clean, "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'bot.db'}")
    database.upgrade()
    try:
        yield database
    finally:
        database.dispose()


def test_cli_rotate_refuses_a_malformed_key_with_exit_2(tmp_path: Path) -> None:
    done = _cli(tmp_path, "--new-key", "hunter2-not-a-key", BOT_SECRET_KEY=OLD_KEY)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --new-key is not a Fernet key")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "hunter2" not in done.stderr + done.stdout
    assert not (tmp_path / "bot.db").exists()  # nothing touched


def test_cli_rotate_re_encrypts_and_reminds_to_set_the_new_key(
    tmp_path: Path, sqlite_db: Database
) -> None:
    _store(sqlite_db, ORG_A, SECRET_A, OLD_KEY)
    _store(sqlite_db, ORG_B, SECRET_B, OLD_KEY)
    done = _cli(tmp_path, "--new-key", NEW_KEY, BOT_SECRET_KEY=OLD_KEY)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 stored Atlas credential(s)" in done.stdout
    assert "Set BOT_SECRET_KEY to the new key" in done.stdout
    for secret in (OLD_KEY, NEW_KEY, SECRET_A, SECRET_B):
        assert secret not in done.stdout + done.stderr
    _assert_all_under(sqlite_db, NEW_KEY, {ORG_A: SECRET_A, ORG_B: SECRET_B})


def test_cli_rotate_with_the_generated_key_file_updates_the_file(
    tmp_path: Path, sqlite_db: Database
) -> None:
    settings = _settings(f"sqlite:///{tmp_path / 'bot.db'}")
    current = load_or_create_key(settings)
    _store(sqlite_db, ORG_A, SECRET_A, current)
    done = _cli(tmp_path, "--new-key", NEW_KEY)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 stored Atlas credential(s)" in done.stdout
    assert f"the key file {tmp_path / KEY_FILE_NAME} now holds the new key" in done.stdout
    assert load_or_create_key(settings) == NEW_KEY
    assert stat.S_IMODE((tmp_path / KEY_FILE_NAME).stat().st_mode) == 0o600
    _assert_all_under(sqlite_db, NEW_KEY, {ORG_A: SECRET_A})


def test_cli_rotate_with_the_wrong_current_key_is_one_clear_line(
    tmp_path: Path, sqlite_db: Database
) -> None:
    _store(sqlite_db, ORG_A, SECRET_A, OLD_KEY)
    wrong = Fernet.generate_key().decode()
    done = _cli(tmp_path, "--new-key", NEW_KEY, BOT_SECRET_KEY=wrong)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: the credentials of org(s) {ORG_A} were encrypted with key id")
    assert "set BOT_SECRET_KEY to the key they were stored with" in line
    assert _rows(sqlite_db)[ORG_A].key_id == SecretBox(OLD_KEY).key_id
