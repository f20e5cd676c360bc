"""Per-org Atlas credentials: the public half in clear, the secret half as ciphertext only.

Nothing here encrypts or decrypts: callers hand in ciphertext made by
`bot.core.secrets` together with the fingerprint (`key_id`) of the key that made it.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from storage._sql import insert
from storage.models import CredentialKind, OrgCredential, utcnow

__all__ = [
    "all_credentials",
    "delete_credential",
    "get_credential",
    "replace_ciphertext",
    "set_credential",
]

_ORG_ID = re.compile(r"[0-9a-f]{24}")
_KINDS = {kind.value for kind in CredentialKind}


def _org_id(org_id: str) -> str:
    normalised = org_id.strip().lower()
    if not _ORG_ID.fullmatch(normalised):
        raise ValueError(f"not an Atlas organization ID (24 hex digits): {org_id!r}")
    return normalised


def set_credential(
    session: Session,
    *,
    org_id: str,
    kind: str,
    public_id: str,
    ciphertext: bytes,
    key_id: str,
    updated_by: str,
    now: datetime | None = None,
) -> OrgCredential:
    """Store (or replace) the org's credentials; an upsert, safe against concurrent calls.

    Replacing bumps `version`. Raises `ValueError` for an org ID that is not 24 hex
    digits, an unknown `kind`, or empty `public_id`, `ciphertext` or `key_id`.
    """
    org_id = _org_id(org_id)
    if kind not in _KINDS:
        raise ValueError(f"credential kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if not public_id or not ciphertext or not key_id:
        raise ValueError("public_id, ciphertext and key_id must not be empty")
    values = {
        "org_id": org_id,
        "kind": kind,
        "public_id": public_id,
        "ciphertext": bytes(ciphertext),
        "key_id": key_id,
        "version": 1,
        "updated_by": updated_by,
        "updated_at": now or utcnow(),
    }
    statement = insert(session, OrgCredential).values(values)
    replaced = {name: statement.excluded[name] for name in values if name != "org_id"}
    # SQLModel's types do not declare the __table__ that every table model has.
    replaced["version"] = OrgCredential.__table__.c.version + 1  # type: ignore[attr-defined]
    credential_id = session.exec(
        statement.on_conflict_do_update(index_elements=["org_id"], set_=replaced).returning(
            col(OrgCredential.id)
        )
    ).scalar_one()
    credential = session.get(OrgCredential, credential_id, populate_existing=True)
    assert credential is not None
    return credential


def get_credential(session: Session, *, org_id: str) -> OrgCredential | None:
    """The org's stored credentials, or None (it uses the configured ones)."""
    return session.exec(
        select(OrgCredential).where(OrgCredential.org_id == _org_id(org_id))
    ).first()


def delete_credential(session: Session, *, org_id: str) -> bool:
    """Forget the org's credentials; False if none were stored."""
    result = session.exec(delete(OrgCredential).where(col(OrgCredential.org_id) == _org_id(org_id)))
    return result.rowcount > 0


def all_credentials(session: Session) -> list[OrgCredential]:
    """Every stored credential, by org."""
    return list(session.exec(select(OrgCredential).order_by(col(OrgCredential.org_id))))


def replace_ciphertext(
    session: Session,
    *,
    id: int,
    old_key_id: str,
    new_ciphertext: bytes,
    new_key_id: str,
    version: int | None = None,
) -> bool:
    """Swap in the same secret encrypted under another key, if the row still has `old_key_id`.

    A compare-and-set: False when the row is gone or was re-encrypted meanwhile,
    so two rotations never overwrite each other. With `version` (the one the
    caller decrypted), also False when the credentials were replaced meanwhile
    (a `connect` racing the rotation), so an old secret never overwrites a new
    one. `version` is left alone: the secret itself did not change.
    """
    if not new_ciphertext or not new_key_id:
        raise ValueError("new_ciphertext and new_key_id must not be empty")
    condition = [col(OrgCredential.id) == id, col(OrgCredential.key_id) == old_key_id]
    if version is not None:
        condition.append(col(OrgCredential.version) == version)
    result = session.exec(
        update(OrgCredential)
        .where(*condition)
        .values(ciphertext=bytes(new_ciphertext), key_id=new_key_id)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
