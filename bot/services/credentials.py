"""Atlas credentials: the client for the configured ones (service account first, else the API
key pair), and the re-encryption of the stored ones under a new key (``secrets rotate``).

Kept apart from ``bot.runtime.app`` so the ``atlas`` CLI commands build a client without
loading Bolt or the database.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.atlas import AtlasClient
from bot.core.config import ConfigError, Settings
from bot.core.secrets import MAX_ROTATION_PASSES, SecretBox, SecretError

if TYPE_CHECKING:
    from storage import Database

log = logging.getLogger(__name__)


def atlas_client(settings: Settings, **options: Any) -> AtlasClient:
    """The Atlas client for the configured credentials (service account preferred)."""
    if not settings.has_atlas_credentials:
        raise ConfigError(
            "no Atlas credentials: set MONGODB_ATLAS_CLIENT_ID and MONGODB_ATLAS_CLIENT_SECRET "
            "(service account) or MONGODB_ATLAS_PUBLIC_API_KEY and MONGODB_ATLAS_PRIVATE_API_KEY; "
            "to try the bot without an account, run `billing-bot shell`, or `billing-bot sandbox` "
            "and paste its export lines"
        )
    return AtlasClient.with_credentials(
        base_url=settings.MONGODB_ATLAS_BASE_URL,
        client_id=settings.MONGODB_ATLAS_CLIENT_ID,
        client_secret=settings.MONGODB_ATLAS_CLIENT_SECRET,
        public_key=settings.MONGODB_ATLAS_PUBLIC_API_KEY,
        private_key=settings.MONGODB_ATLAS_PRIVATE_API_KEY,
        **options,
    )


def rotate(db: Database, old_key: str, new_key: str) -> int:
    """Re-encrypt every stored credential from ``old_key`` to ``new_key``; returns how many.

    Row by row, each in its own transaction with a compare-and-set on the row's
    ``key_id`` and ``version``: a rotation that stops midway (crash, Ctrl-C) is
    resumed by running it again with the same keys, since rows already under the
    new key are skipped and each row is decrypted with whichever key made it.
    Rows changed meanwhile (a ``connect``) are picked up by another pass. A row
    under a key that is neither stops everything before any row is changed.
    """
    from storage import credentials  # here, so the `atlas` commands never load the database

    old = SecretBox(old_key, source="the current key")
    new = SecretBox(new_key, source="the new key")
    boxes = {old.key_id: old, new.key_id: new}
    done = 0
    for _ in range(MAX_ROTATION_PASSES):
        with db.session() as session:
            todo = [row for row in credentials.all_credentials(session) if row.key_id != new.key_id]
        if not todo:
            return done
        foreign = [row for row in todo if row.key_id not in boxes]
        if foreign:
            orgs = ", ".join(row.org_id for row in foreign[:3])
            raise SecretError(
                f"the credentials of org(s) {orgs} were encrypted with key id "
                f"{foreign[0].key_id}, neither the current key ({old.key_id}) nor the new one "
                f"({new.key_id}); set BOT_SECRET_KEY to the key they were stored with and run "
                "the rotation again"
            )
        for row in todo:
            assert row.id is not None  # read from the database
            plaintext = boxes[row.key_id].decrypt(row.ciphertext)
            with db.session() as session:
                replaced = credentials.replace_ciphertext(
                    session,
                    id=row.id,
                    old_key_id=row.key_id,
                    new_ciphertext=new.encrypt(plaintext),
                    new_key_id=new.key_id,
                    version=row.version,
                )
            if replaced:
                done += 1
                log.info("re-encrypted the credentials of org %s", row.org_id)
    raise SecretError(
        "stored credentials kept changing during the rotation; stop the bot and run it again"
    )
