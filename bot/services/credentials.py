"""Atlas credentials: the configured ones, each org's own (``connect ORG_ID``), and their keys.

- ``atlas_client``: the client for the configured credentials (service account first, else
  the API key pair). Kept light so the ``atlas`` CLI commands build one without loading Bolt
  or the database.
- ``OrgCredentials``: the client each org uses right now (its stored credentials, decrypted
  with the bot's key, else the configured client), sharing one connection pool; a replaced
  or removed credential's client is closed and dropped at the next look-up.
- ``problems``, ``connect_from``, ``try_on_atlas``, ``store``: the steps of ``connect``: the
  typed-in credentials' form, where the org may be connected from, a trial on Atlas, and the
  encrypted write with its audit entry. The secret is never echoed, logged or audited.
- ``rotate``: re-encrypts every stored credential under a new key (``secrets rotate``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx

from bot.atlas import AtlasClient, AtlasError, ServiceAccountAuth, api_key_auth
from bot.core.config import ConfigError, Settings
from bot.core.redaction import register_secret
from bot.core.secrets import (
    MAX_ROTATION_PASSES,
    SecretBox,
    SecretError,
    key_file,
    load_or_create_key,
)

if TYPE_CHECKING:
    from sqlmodel import Session

    from bot.deps import Deps
    from storage import Database
    from storage.models import OrgCredential

log = logging.getLogger(__name__)


class UnreadableCredentials(AtlasError):
    """An org's stored credentials cannot be decrypted with this process's key (see the message)."""


def credential_auth(*, kind: str, public_id: str, secret: str) -> httpx.Auth:
    """The ``httpx`` auth for one set of credentials: a service account or an API key pair."""
    from storage.models import CredentialKind

    register_secret(secret)  # stored or just typed in: either way kept out of the logs
    if kind == CredentialKind.SERVICE_ACCOUNT:
        return ServiceAccountAuth(public_id, secret)
    return api_key_auth(public_id, secret)


class OrgCredentials:
    """Which Atlas client each org uses, and the key its stored credentials are sealed with.

    The stored credentials are looked up at each call (one database read), so a ``connect``
    on another replica takes effect here too. Clients are kept per org with the version of
    the credential they were made from; every one is ``base.with_auth(...)``, so all orgs
    share the base client's connection pool.
    """

    def __init__(self, settings: Settings, base: AtlasClient, db: Database) -> None:
        self._settings = settings
        self._base = base
        self._db = db
        self._box: SecretBox | None = None
        self._clients: dict[str, tuple[tuple[int, int], AtlasClient]] = {}

    def box(self) -> SecretBox:
        """The box for stored credentials, around ``BOT_SECRET_KEY`` or the generated key file.

        Raises ``SecretError`` when the key is malformed or the key file cannot be written.
        """
        if self._box is None:
            settings = self._settings
            source = (
                "BOT_SECRET_KEY"
                if settings.BOT_SECRET_KEY
                else f"the generated key in {key_file(settings)}"
            )
            self._box = SecretBox(load_or_create_key(settings), source=source)
        return self._box

    def cached(self) -> dict[str, tuple[int, int]]:
        """The credential (row id, version) each org's client is made from, for tests and logs."""
        return {org_id: version for org_id, (version, _) in self._clients.items()}

    async def client(self, org_id: str) -> AtlasClient:
        """The client for ``org_id`` now: its stored credentials' if an admin connected some,
        else the configured one."""
        from storage import credentials

        try:
            row = await self._db.run(credentials.get_credential, org_id=org_id)
        except ValueError:
            return self._base  # not an org ID: the client refuses it with InvalidInput
        held = self._clients.get(org_id)
        if row is None or row.id is None:
            if held is not None:  # removed since: its client goes too
                await self._drop(org_id, held[1])
            return self._base
        version = (row.id, row.version)
        if held is not None and held[0] == version:
            return held[1]
        # No await between this check and the insert: one client per credential version.
        client = self._base.with_auth(self._auth(row))
        self._clients[org_id] = (version, client)
        if held is not None:  # replaced: the old one revokes its token and is forgotten
            await held[1].aclose()
        return client

    def _auth(self, row: OrgCredential) -> httpx.Auth:
        try:
            box = self.box()
            if row.key_id != box.key_id:
                raise SecretError(
                    f"they were encrypted with another key (key id {row.key_id}) than "
                    f"{box.source} (key id {box.key_id}); set BOT_SECRET_KEY to the key they "
                    "were stored with, or connect the org again"
                )
            secret = box.decrypt(row.ciphertext)
        except SecretError as exc:
            log.error("stored Atlas credentials of org %s unusable: %s", row.org_id, exc)
            raise UnreadableCredentials(
                f"The stored Atlas credentials of org {row.org_id} cannot be used: {exc}."
            ) from None
        return credential_auth(kind=row.kind, public_id=row.public_id, secret=secret)

    async def _drop(self, org_id: str, client: AtlasClient) -> None:
        if self._clients.get(org_id, (None, None))[1] is client:
            del self._clients[org_id]
        await client.aclose()

    async def aclose(self) -> None:
        clients = [client for _, client in self._clients.values()]
        self._clients.clear()
        for client in clients:
            await client.aclose()


# ---- connect ORG_ID ---------------------------------------------------------------------------

# The Atlas check runs after the submission was answered (the modal says "Trying…"), so it is
# not bound by Slack's 3 seconds; it still ends, for the person watching the modal.
CHECK_SECONDS = 20.0

# By `storage.models.CredentialKind` (its values, so the `atlas` CLI need not load the database).
KIND_NAMES = {"service_account": "a service account", "api_key": "an API key"}

_SA_CLIENT_ID = re.compile(r"mdb_sa_id_[0-9a-f]{24}")
_SA_SECRET = re.compile(r"[\x21-\x7e]{16,256}")  # printable ASCII, no blanks
_PUBLIC_KEY = re.compile(r"[a-z]{8}")
_PRIVATE_KEY = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


class Field(StrEnum):
    """The parts of a set of credentials a person types in (the modal's fields are named so)."""

    KIND = "kind"
    PUBLIC_ID = "public_id"
    SECRET = "secret"


@dataclass(frozen=True)
class TypedCredentials:
    """Credentials as a person typed them in, not yet checked."""

    kind: str
    public_id: str
    secret: str

    def __repr__(self) -> str:  # never print the secret, even in a traceback's locals
        return (
            f"TypedCredentials(kind={self.kind!r}, public_id={self.public_id!r}, secret=<hidden>)"
        )


def problems(typed: TypedCredentials) -> dict[Field, str]:
    """What is wrong with the form of typed-in credentials, by field; empty when all is well.

    The messages describe the expected form and never repeat what was typed.
    """
    errors: dict[Field, str] = {}
    if typed.kind not in KIND_NAMES:
        errors[Field.KIND] = "Choose a service account or an API key pair."
        return errors
    if typed.kind == "service_account":
        if not typed.public_id:
            errors[Field.PUBLIC_ID] = "Enter the service account's client ID."
        elif _PUBLIC_KEY.fullmatch(typed.public_id):
            errors[Field.PUBLIC_ID] = (
                "This looks like an API public key: choose “API key pair” above, "
                "or enter the service account's client ID (mdb_sa_id_…)."
            )
        elif not _SA_CLIENT_ID.fullmatch(typed.public_id):
            errors[Field.PUBLIC_ID] = (
                "A service account client ID is mdb_sa_id_ followed by 24 hex digits."
            )
        if not typed.secret:
            errors[Field.SECRET] = "Enter the service account's client secret."
        elif not _SA_SECRET.fullmatch(typed.secret):
            errors[Field.SECRET] = (
                "A client secret is 16 to 256 characters without blanks; copy it again from Atlas."
            )
    else:
        if not typed.public_id:
            errors[Field.PUBLIC_ID] = "Enter the API public key."
        elif _SA_CLIENT_ID.fullmatch(typed.public_id):
            errors[Field.PUBLIC_ID] = (
                "This looks like a service account client ID: choose “Service account” above, "
                "or enter the API public key (8 lowercase letters)."
            )
        elif not _PUBLIC_KEY.fullmatch(typed.public_id):
            errors[Field.PUBLIC_ID] = "An API public key is 8 lowercase letters, such as abcdwxyz."
        if not typed.secret:
            errors[Field.SECRET] = "Enter the API private key."
        elif not _PRIVATE_KEY.fullmatch(typed.secret):
            errors[Field.SECRET] = (
                "An API private key is a UUID such as 01234567-89ab-cdef-0123-456789abcdef."
            )
    return errors


async def connect_from(
    deps: Deps, *, org_id: str, team_id: str, channel_id: str
) -> OrgCredential | None:
    """The org's current credentials, if any, when this channel may connect it.

    The credentials serve every channel that follows the org: only one of those channels (or
    any, before the org is linked anywhere) may replace them; others get a ``Refusal``.
    """
    from bot.render.explain import Refusal
    from storage import credentials, links

    linking = await deps.db.run(links.channels_linking, org_id=org_id)
    if linking and (team_id, channel_id) not in linking:
        raise Refusal(
            f"Org `{org_id}` is followed by other channels, not this one: connect it "
            "from one of them."
        )
    return await deps.db.run(credentials.get_credential, org_id=org_id)


async def try_on_atlas(deps: Deps, org_id: str, typed: TypedCredentials) -> None:
    """Read the org's billing with the typed-in credentials, over the bot's own pool.

    The cheapest billing read there is: one invoice of the invoice list (``itemsPerPage=1``),
    which needs the same Organization Billing Viewer role as everything the bot reads. Not the
    pending invoice: a large org's is tens of MB. Raises ``AtlasError`` when Atlas refuses
    them and ``TimeoutError`` after ``CHECK_SECONDS``.
    """
    client = deps.atlas.with_auth(
        credential_auth(kind=typed.kind, public_id=typed.public_id, secret=typed.secret)
    )
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            async for _ in await client.invoices(org_id, items_per_page=1, limit=1):
                break
    finally:
        await client.aclose()


async def store(
    deps: Deps,
    *,
    org_id: str,
    team_id: str,
    channel_id: str,
    user_id: str,
    typed: TypedCredentials,
) -> OrgCredential:
    """Encrypt the secret and store the credentials with their audit entry, in one transaction.

    Raises ``SecretError`` when the bot's key is unusable and ``StorageError`` when the
    database refuses; nothing is stored then.
    """
    box = deps.credentials.box()
    ciphertext = box.encrypt(typed.secret)
    row = await deps.db.run(
        _store_and_audit,
        org_id=org_id,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        kind=typed.kind,
        public_id=typed.public_id,
        ciphertext=ciphertext,
        key_id=box.key_id,
    )
    log.info("%s stored %s credentials for Atlas org %s", user_id, typed.kind, org_id)
    return row


def _store_and_audit(
    session: Session,
    *,
    org_id: str,
    team_id: str,
    channel_id: str,
    user_id: str,
    kind: str,
    public_id: str,
    ciphertext: bytes,
    key_id: str,
) -> OrgCredential:
    from storage import audit, credentials

    row = credentials.set_credential(
        session,
        org_id=org_id,
        kind=kind,
        public_id=public_id,
        ciphertext=ciphertext,
        key_id=key_id,
        updated_by=user_id,
    )
    audit.record(
        session,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        action="connect",
        detail={"org_id": org_id, "kind": kind, "public_id": public_id, "version": row.version},
    )
    return row


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
