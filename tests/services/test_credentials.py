"""``OrgCredentials``: each org's Atlas client, over one pool, dropped when its credential goes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.fernet import Fernet

from bot.atlas import AtlasClient
from bot.core.config import Settings
from bot.sandbox import OAUTH_REVOKE, OAUTH_TOKEN, SandboxServer
from bot.services.credentials import (
    KIND_NAMES,
    Field,
    OrgCredentials,
    TypedCredentials,
    UnreadableCredentials,
    problems,
)
from storage import Database, credentials

KEY = Fernet.generate_key().decode()


@pytest.fixture
async def base(sandbox: SandboxServer) -> AsyncIterator[AtlasClient]:
    creds = sandbox.data.credentials
    client = AtlasClient.with_credentials(
        base_url=sandbox.base_url, client_id=creds.client_id, client_secret=creds.client_secret
    )
    yield client
    await client.aclose()


@pytest.fixture
def org_id(sandbox: SandboxServer) -> str:
    return sandbox.data.org_ids[1]


def _store(creds: OrgCredentials, db: Database, org_id: str, kind: str, public: str, secret: str):
    box = creds.box()
    with db.session() as session:
        return credentials.set_credential(
            session,
            org_id=org_id,
            kind=kind,
            public_id=public,
            ciphertext=box.encrypt(secret),
            key_id=box.key_id,
            updated_by="U_ADMIN",
        )


def _org_credentials(base: AtlasClient, db: Database) -> OrgCredentials:
    return OrgCredentials(Settings(_env_file=None, BOT_SECRET_KEY=KEY), base, db)


async def test_an_org_without_its_own_credentials_uses_the_configured_client(base, db, org_id):
    creds = _org_credentials(base, db)
    assert await creds.client(org_id) is base
    assert await creds.client("not-an-org-id") is base  # refused by the client itself
    assert creds.cached() == {}


async def test_stored_credentials_get_their_own_client_over_the_same_pool(
    base, db, sandbox, org_id
):
    keys = sandbox.data.credentials
    creds = _org_credentials(base, db)
    row = _store(creds, db, org_id, "api_key", keys.public_key, keys.private_key)
    client = await creds.client(org_id)
    assert client is not base and await creds.client(org_id) is client  # kept, not rebuilt
    assert client._http is base._http  # one connection pool for every org
    sandbox.state.requests.clear()
    assert await client.pending_totals(org_id)
    [answered] = [r for r in sandbox.state.requests if r.status == 200]
    assert f'username="{keys.public_key}"' in answered.headers["authorization"]
    assert creds.cached() == {org_id: (row.id, 1)}
    await creds.aclose()
    assert await base.pending_totals(org_id)  # the pool is the base client's, still open


async def test_a_replaced_credential_closes_the_old_client_and_a_removed_one_falls_back(
    base, db, sandbox, org_id
):
    keys = sandbox.data.credentials
    creds = _org_credentials(base, db)
    _store(creds, db, org_id, "service_account", keys.client_id, keys.client_secret)
    first = await creds.client(org_id)
    assert await first.pending_totals(org_id)  # fetches the org's own token
    sandbox.state.requests.clear()

    row = _store(creds, db, org_id, "api_key", keys.public_key, keys.private_key)
    second = await creds.client(org_id)
    assert second is not first and creds.cached() == {org_id: (row.id, 2)}
    assert [r.operation for r in sandbox.state.requests] == [OAUTH_REVOKE]  # the old token

    with db.session() as session:
        credentials.delete_credential(session, org_id=org_id)
    assert await creds.client(org_id) is base and creds.cached() == {}
    assert OAUTH_TOKEN not in [r.operation for r in sandbox.state.requests]


async def test_credentials_sealed_with_another_key_are_one_readable_error(base, db, org_id):
    stored_with = OrgCredentials(
        Settings(_env_file=None, BOT_SECRET_KEY=Fernet.generate_key().decode()), base, db
    )
    _store(stored_with, db, org_id, "api_key", "abcdefgh", "a-private-key-0123")
    with pytest.raises(UnreadableCredentials, match="encrypted with another key"):
        await _org_credentials(base, db).client(org_id)


# ---- the form of typed-in credentials (connect) -----------------------------------------------

SA_ID = "mdb_sa_id_" + "a1" * 12
API_PRIVATE = "01234567-89ab-cdef-0123-456789abcdef"


def test_kind_names_cover_exactly_the_stored_kinds() -> None:
    from storage.models import CredentialKind

    assert set(KIND_NAMES) == {kind.value for kind in CredentialKind}


@pytest.mark.parametrize(
    ("typed", "fields"),
    [
        (TypedCredentials("service_account", SA_ID, "s" * 16), set()),
        (TypedCredentials("api_key", "abcdwxyz", API_PRIVATE), set()),
        (TypedCredentials("", SA_ID, "s" * 16), {Field.KIND}),
        (
            TypedCredentials("service_account", "abcdwxyz", "s" * 15),
            {Field.PUBLIC_ID, Field.SECRET},
        ),
        (TypedCredentials("api_key", SA_ID, "not-a-uuid"), {Field.PUBLIC_ID, Field.SECRET}),
        (TypedCredentials("api_key", "", ""), {Field.PUBLIC_ID, Field.SECRET}),
    ],
)
def test_problems_name_the_fields_to_fix(typed: TypedCredentials, fields: set[Field]) -> None:
    found = problems(typed)
    assert set(found) == fields
    for text in found.values():  # what was typed never comes back
        assert typed.secret not in text or not typed.secret
        assert SA_ID not in text


def test_typed_credentials_never_show_their_secret() -> None:
    typed = TypedCredentials("api_key", "abcdwxyz", API_PRIVATE)
    assert API_PRIVATE not in repr(typed) and API_PRIVATE not in str(typed)
