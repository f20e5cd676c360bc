"""Per-org Atlas credentials: upsert with versions, compare-and-set re-encryption, migration 0003."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from storage import credentials
from storage.db import Database, alembic_config, upgrade
from storage.models import CredentialKind
from tests.storage.conftest import ORG_A, ORG_B, run_together

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _set(db: Database, org_id: str = ORG_A, **values):
    fields = {
        "kind": CredentialKind.API_KEY.value,
        "public_id": "abcdwxyz",
        "ciphertext": b"token-1",
        "key_id": "k1",
        "updated_by": "U1",
        **values,
    }
    with db.session() as session:
        return credentials.set_credential(session, org_id=org_id, **fields)


def _get(db: Database, org_id: str = ORG_A):
    with db.session() as session:
        return credentials.get_credential(session, org_id=org_id)


def test_set_get_and_replace_bumps_the_version(db: Database) -> None:
    first = _set(db, now=T0)
    assert (first.org_id, first.kind, first.public_id, first.version) == (
        ORG_A,
        "api_key",
        "abcdwxyz",
        1,
    )
    assert bytes(first.ciphertext) == b"token-1" and first.updated_at == T0

    second = _set(
        db,
        kind=CredentialKind.SERVICE_ACCOUNT.value,
        public_id="mdb_sa_id_" + "a" * 24,
        ciphertext=b"token-2",
        key_id="k2",
        updated_by="U2",
    )
    assert second.id == first.id
    stored = _get(db)
    assert stored is not None
    assert (stored.kind, stored.public_id, bytes(stored.ciphertext), stored.key_id) == (
        "service_account",
        "mdb_sa_id_" + "a" * 24,
        b"token-2",
        "k2",
    )
    assert (stored.version, stored.updated_by) == (2, "U2")


def test_org_ids_are_normalised_and_checked(db: Database) -> None:
    _set(db, ORG_A.upper())
    assert _get(db, f" {ORG_A} ") is not None
    with pytest.raises(ValueError, match="24 hex digits"):
        _set(db, "not-an-org")
    with pytest.raises(ValueError, match="kind"):
        _set(db, kind="password")
    with pytest.raises(ValueError, match="empty"):
        _set(db, ciphertext=b"")


def test_delete_and_all_credentials(db: Database) -> None:
    _set(db, ORG_B)
    _set(db, ORG_A)
    with db.session() as session:
        assert [c.org_id for c in credentials.all_credentials(session)] == [ORG_A, ORG_B]
        assert credentials.delete_credential(session, org_id=ORG_A) is True
        assert credentials.delete_credential(session, org_id=ORG_A) is False
        assert [c.org_id for c in credentials.all_credentials(session)] == [ORG_B]
    assert _get(db, ORG_A) is None


def test_replace_ciphertext_is_a_compare_and_set_on_key_and_version(db: Database) -> None:
    row = _set(db)
    with db.session() as session:
        assert not credentials.replace_ciphertext(
            session, id=row.id, old_key_id="other", new_ciphertext=b"x", new_key_id="k2"
        )
        assert not credentials.replace_ciphertext(
            session,
            id=row.id,
            old_key_id="k1",
            new_ciphertext=b"x",
            new_key_id="k2",
            version=row.version + 1,
        )
        assert credentials.replace_ciphertext(
            session,
            id=row.id,
            old_key_id="k1",
            new_ciphertext=b"token-1-under-k2",
            new_key_id="k2",
            version=row.version,
        )
        # Done once: a second rotation from k1 finds nothing to do.
        assert not credentials.replace_ciphertext(
            session, id=row.id, old_key_id="k1", new_ciphertext=b"y", new_key_id="k2"
        )
    stored = _get(db)
    assert stored is not None
    assert (bytes(stored.ciphertext), stored.key_id, stored.version) == (
        b"token-1-under-k2",
        "k2",
        1,  # the secret did not change: cached clients stay valid
    )


def test_concurrent_connects_leave_one_row(db: Database) -> None:
    def connect(i: int) -> int:
        return _set(db, ciphertext=f"token-{i}".encode(), updated_by=f"U{i}").version

    versions = run_together(4, connect)
    with db.session() as session:
        [row] = credentials.all_credentials(session)
    assert sorted(versions) == [1, 2, 3, 4] and row.version == 4


def test_the_schema_refuses_unknown_kinds_and_duplicate_orgs(db: Database) -> None:
    _set(db)
    insert = (
        "INSERT INTO org_credential (org_id, kind, public_id, ciphertext, key_id, version, "
        "updated_by, updated_at) VALUES (:org, :kind, 'p', :c, 'k', 1, 'U', :at)"
    )
    for org, kind in ((ORG_B, "password"), (ORG_A, "api_key")):
        with pytest.raises(IntegrityError), db.session() as session:
            # Raw SQL on the session's own connection (sqlmodel's `exec` is typed for ORM statements).
            params = {"org": org, "kind": kind, "c": b"c", "at": T0}
            session.connection().execute(text(insert), params)


def test_migration_0003_downgrades_and_upgrades(db: Database) -> None:
    _set(db)
    with db.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        if db.dialect == "sqlite":
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                command.downgrade(alembic_config(conn), "0002")
        finally:
            if db.dialect == "sqlite":
                raw.execute("PRAGMA foreign_keys = ON")
    assert "org_credential" not in inspect(db.engine).get_table_names()
    upgrade(db.engine)
    assert "org_credential" in inspect(db.engine).get_table_names()
    assert _get(db) is None
    _set(db)
    assert _get(db) is not None
