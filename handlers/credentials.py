"""``connect ORG_ID``: a modal for an org's own Atlas credentials, tried on Atlas, stored encrypted.

The command (admins only, checked before dispatch) opens the modal; its
submission is validated, tried against Atlas (the org's pending invoice) and
only then stored, encrypted with ``BOT_SECRET_KEY``. Problems come back as
``response_action: errors`` on the field concerned, with nothing stored. The
secret is never echoed, logged or put in an audit entry, not even its length.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.errors import SlackApiError
from sqlmodel import Session

from bot.atlas import AtlasError, Forbidden, InvalidInput, NotFound, Unauthorized
from bot.atlas import validate_org_id as checked_org_id
from bot.core.secrets import SecretError
from bot.deps import Deps
from bot.render.blocks import notice
from bot.render.explain import Refusal, explain
from bot.services.credentials import credential_auth
from bot.services.links import is_admin
from handlers.grammar import Connect
from handlers.invocation import Invocation
from storage import StorageError, audit, credentials, links
from storage.models import CredentialKind, OrgCredential

log = logging.getLogger(__name__)

CALLBACK_ID = "connect_org"
KIND_BLOCK = "kind"
PUBLIC_BLOCK = "public_id"
SECRET_BLOCK = "secret"
ACTION = "value"
# Slack closes the modal with an error unless the submission is answered within 3 seconds;
# the Atlas check gets most of that.
CHECK_SECONDS = 2.0

_SA_CLIENT_ID = re.compile(r"mdb_sa_id_[0-9a-f]{24}")
_SA_SECRET = re.compile(r"[\x21-\x7e]{16,256}")  # printable ASCII, no blanks
_PUBLIC_KEY = re.compile(r"[a-z]{8}")
_PRIVATE_KEY = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

KIND_NAMES = {
    CredentialKind.SERVICE_ACCOUNT.value: "a service account",
    CredentialKind.API_KEY.value: "an API key",
}


# ---- the command: open the modal -------------------------------------------------------------


async def connect(invocation: Invocation, command: Connect) -> None:
    """Store Atlas credentials for an organization (encrypted, never shown again)"""
    deps = invocation.deps
    if not invocation.trigger_id:
        await invocation.ephemeral("Slack sent no trigger to open the form with; try again.")
        return
    linking = await deps.db.run(links.channels_linking, org_id=command.org_id)
    if linking and (invocation.team_id, invocation.channel_id) not in linking:
        # The credentials serve every channel that follows the org: only one of those
        # channels (or any, before the org is linked anywhere) may replace them.
        raise Refusal(
            f"Org `{command.org_id}` is followed by other channels, not this one: connect it "
            "from one of them."
        )
    existing = await deps.db.run(credentials.get_credential, org_id=command.org_id)
    view = connect_view(
        org_id=command.org_id,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        existing=existing,
    )
    await deps.slack.views_open(trigger_id=invocation.trigger_id, view=view)


def connect_view(
    *, org_id: str, team_id: str, channel_id: str, existing: OrgCredential | None = None
) -> dict[str, Any]:
    """The modal: credential type, the public ID and the secret; where to report in the metadata."""
    options = [
        _option(CredentialKind.SERVICE_ACCOUNT.value, "Service account (client ID and secret)"),
        _option(CredentialKind.API_KEY.value, "API key pair (public and private key)"),
    ]
    intro = (
        f"Atlas credentials for org `{org_id}`. They need the *Organization Billing Viewer* "
        "role. The bot tries them on Atlas first, stores the secret encrypted and never "
        "shows it again."
    )
    if existing is not None:
        intro += (
            f"\nThis org already uses {KIND_NAMES.get(existing.kind, 'credentials')} "
            f"(`{existing.public_id}`); saving replaces it."
        )
    return {
        "type": "modal",
        "callback_id": CALLBACK_ID,
        "private_metadata": json.dumps(
            {"org_id": org_id, "team_id": team_id, "channel_id": channel_id}
        ),
        "title": {"type": "plain_text", "text": "Connect an Atlas org"},
        "submit": {"type": "plain_text", "text": "Connect"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": intro}},
            {
                "type": "input",
                "block_id": KIND_BLOCK,
                "label": {"type": "plain_text", "text": "Credential type"},
                "element": {
                    "type": "radio_buttons",
                    "action_id": ACTION,
                    "options": options,
                    "initial_option": options[0],
                },
            },
            _text_input(
                PUBLIC_BLOCK,
                "Client ID or public key",
                "Service account: mdb_sa_id_… · API key: 8 lowercase letters",
                max_length=64,
            ),
            _text_input(
                SECRET_BLOCK,
                "Client secret or private key",
                "Shown by Atlas only when it was created; stored encrypted.",
                max_length=256,
            ),
        ],
    }


def _option(value: str, text: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text}, "value": value}


def _text_input(block_id: str, label: str, hint: str, *, max_length: int) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": block_id,
        "label": {"type": "plain_text", "text": label},
        "hint": {"type": "plain_text", "text": hint},
        "element": {"type": "plain_text_input", "action_id": ACTION, "max_length": max_length},
    }


# ---- the submission --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the modal was opened from, as carried in its private_metadata."""

    org_id: str
    team_id: str
    channel_id: str


@dataclass(frozen=True)
class Form:
    kind: str
    public_id: str
    secret: str

    def __repr__(self) -> str:  # never print the secret, even in a traceback's locals
        return f"Form(kind={self.kind!r}, public_id={self.public_id!r}, secret=<hidden>)"


def read_target(private_metadata: str) -> Target:
    """The org, team and channel of the modal; ``ValueError`` when they are not ours."""
    data = json.loads(private_metadata or "{}")
    if not isinstance(data, dict):
        raise ValueError("private_metadata is not an object")
    org_id, team_id, channel_id = (
        str(data.get(k) or "") for k in ("org_id", "team_id", "channel_id")
    )
    try:
        checked_org_id(org_id)
    except InvalidInput:
        raise ValueError("private_metadata carries no org ID") from None
    if not team_id or not channel_id:
        raise ValueError("private_metadata carries no team or channel")
    return Target(org_id=org_id, team_id=team_id, channel_id=channel_id)


def read_form(values: dict[str, Any]) -> Form:
    """The submitted values, stripped of surrounding blanks."""

    def element(block: str) -> dict[str, Any]:
        found = (values.get(block) or {}).get(ACTION)
        return found if isinstance(found, dict) else {}

    kind = str((element(KIND_BLOCK).get("selected_option") or {}).get("value") or "")
    public_id = str(element(PUBLIC_BLOCK).get("value") or "").strip()
    secret = str(element(SECRET_BLOCK).get("value") or "").strip()
    return Form(kind=kind, public_id=public_id, secret=secret)


def validate(form: Form) -> dict[str, str]:
    """Errors by block ID, in the form Slack shows under each field; empty when all is well.

    The messages describe the expected form and never repeat what was typed.
    """
    errors: dict[str, str] = {}
    if form.kind not in KIND_NAMES:
        errors[KIND_BLOCK] = "Choose a service account or an API key pair."
        return errors
    if form.kind == CredentialKind.SERVICE_ACCOUNT:
        if not form.public_id:
            errors[PUBLIC_BLOCK] = "Enter the service account's client ID."
        elif _PUBLIC_KEY.fullmatch(form.public_id):
            errors[PUBLIC_BLOCK] = (
                "This looks like an API public key: choose “API key pair” above, "
                "or enter the service account's client ID (mdb_sa_id_…)."
            )
        elif not _SA_CLIENT_ID.fullmatch(form.public_id):
            errors[PUBLIC_BLOCK] = (
                "A service account client ID is mdb_sa_id_ followed by 24 hex digits."
            )
        if not form.secret:
            errors[SECRET_BLOCK] = "Enter the service account's client secret."
        elif not _SA_SECRET.fullmatch(form.secret):
            errors[SECRET_BLOCK] = (
                "A client secret is 16 to 256 characters without blanks; copy it again from Atlas."
            )
    else:
        if not form.public_id:
            errors[PUBLIC_BLOCK] = "Enter the API public key."
        elif _SA_CLIENT_ID.fullmatch(form.public_id):
            errors[PUBLIC_BLOCK] = (
                "This looks like a service account client ID: choose “Service account” above, "
                "or enter the API public key (8 lowercase letters)."
            )
        elif not _PUBLIC_KEY.fullmatch(form.public_id):
            errors[PUBLIC_BLOCK] = "An API public key is 8 lowercase letters, such as abcdwxyz."
        if not form.secret:
            errors[SECRET_BLOCK] = "Enter the API private key."
        elif not _PRIVATE_KEY.fullmatch(form.secret):
            errors[SECRET_BLOCK] = (
                "An API private key is a UUID such as 01234567-89ab-cdef-0123-456789abcdef."
            )
    return errors


def atlas_errors(exc: AtlasError, org_id: str) -> dict[str, str]:
    """What an Atlas refusal during the check means, on the field to fix."""
    if isinstance(exc, Unauthorized):
        return {
            SECRET_BLOCK: "Atlas refused these credentials (401). Check the ID and the secret, "
            "and that the key is neither expired nor limited to other IP addresses."
        }
    if isinstance(exc, Forbidden):
        return {
            PUBLIC_BLOCK: "Atlas accepted these credentials but they cannot read this org's "
            f"billing (403): give them the Organization Billing Viewer role on org {org_id}."
        }
    if isinstance(exc, NotFound):
        return {
            PUBLIC_BLOCK: f"Atlas knows no org {org_id} for these credentials (404): check the "
            "ORG_ID and that the credentials belong to that org."
        }
    return {PUBLIC_BLOCK: f"Atlas could not check these credentials: {explain(exc)}"}


def _store(
    session: Session,
    *,
    target: Target,
    user_id: str,
    kind: str,
    public_id: str,
    ciphertext: bytes,
    key_id: str,
) -> OrgCredential:
    row = credentials.set_credential(
        session,
        org_id=target.org_id,
        kind=kind,
        public_id=public_id,
        ciphertext=ciphertext,
        key_id=key_id,
        updated_by=user_id,
    )
    audit.record(
        session,
        team_id=target.team_id,
        channel_id=target.channel_id,
        user_id=user_id,
        action="connect",
        detail={
            "org_id": target.org_id,
            "kind": kind,
            "public_id": public_id,
            "version": row.version,
        },
    )
    return row


def register(app: AsyncApp, deps: Deps) -> None:
    async def refuse(ack: AsyncAck, block: str, text: str) -> None:
        await ack(response_action="errors", errors={block: text})

    async def on_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        user_id = str((body.get("user") or {}).get("id") or "")
        team_id = str((body.get("team") or {}).get("id") or "")
        try:
            target = read_target(view.get("private_metadata") or "")
        except ValueError:
            target = None
        if target is None or target.team_id != team_id:
            await refuse(
                ack, PUBLIC_BLOCK, "This form is out of date: run `/atlas-billing connect` again."
            )
            return
        try:
            admin = await is_admin(deps, user_id)
        except SlackApiError as exc:
            await refuse(ack, PUBLIC_BLOCK, explain(exc))
            return
        if not admin:
            await refuse(
                ack,
                PUBLIC_BLOCK,
                "Only workspace admins and owners (and the bot's configured admins) can "
                "connect Atlas credentials.",
            )
            return
        form = read_form((view.get("state") or {}).get("values") or {})
        errors = validate(form)
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        # The typed-in credentials, tried over the bot's own connection pool.
        client = deps.atlas.with_auth(
            credential_auth(kind=form.kind, public_id=form.public_id, secret=form.secret)
        )
        try:
            try:
                async with asyncio.timeout(CHECK_SECONDS):
                    await client.pending_invoices(target.org_id)
            except TimeoutError:
                await refuse(
                    ack,
                    PUBLIC_BLOCK,
                    f"Atlas did not answer within {CHECK_SECONDS:.0f} seconds; nothing was "
                    "stored. Try again.",
                )
                return
            except AtlasError as exc:
                await ack(response_action="errors", errors=atlas_errors(exc, target.org_id))
                return
            try:
                box = deps.credentials.box()
                ciphertext = box.encrypt(form.secret)
                row = await deps.db.run(
                    _store,
                    target=target,
                    user_id=user_id,
                    kind=form.kind,
                    public_id=form.public_id,
                    ciphertext=ciphertext,
                    key_id=box.key_id,
                )
            except SecretError as exc:
                log.error("cannot store Atlas credentials for org %s: %s", target.org_id, exc)
                await refuse(
                    ack,
                    SECRET_BLOCK,
                    "The bot cannot encrypt credentials: its secret key is not usable. "
                    "Nothing was stored; the operators have the details in the bot's log.",
                )
                return
            except StorageError as exc:
                await refuse(ack, SECRET_BLOCK, explain(exc))
                return
            await ack()
        finally:
            await client.aclose()
        log.info("%s stored %s credentials for Atlas org %s", user_id, form.kind, target.org_id)
        verb = "connected" if row.version == 1 else "replaced the credentials of"
        text = (
            f"<@{user_id}> {verb} Atlas org `{target.org_id}` with {KIND_NAMES[form.kind]} "
            f"(`{form.public_id}`). The bot uses it for this org from now on; the secret is "
            "stored encrypted and cannot be shown again."
        )
        try:
            await deps.slack.chat_postMessage(channel=target.channel_id, **notice(text).kwargs())
        except SlackApiError as exc:
            log.warning(
                "stored credentials for org %s but could not say so in %s: %s",
                target.org_id,
                target.channel_id,
                exc.response.get("error") if exc.response else exc,
            )

    app.view(CALLBACK_ID)(on_submit)
