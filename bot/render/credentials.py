"""What ``connect ORG_ID`` looks like: the modal, its field errors, and the channel's notice.

The modal's input blocks are named by ``services.credentials.Field``, so an error about a
field lands under that field (``response_action: errors``).
"""

from __future__ import annotations

import json
from typing import Any

from bot.atlas import AtlasError, Forbidden, NotFound, Unauthorized
from bot.render.blocks import Message, notice
from bot.render.explain import ATLAS_REMEDIES, atlas_remedy, explain
from bot.services.credentials import CHECK_SECONDS, KIND_NAMES, Field
from storage.models import CredentialKind, OrgCredential

CALLBACK_ID = "connect_org"
# The one element of each input block: its value is read back as values[field][ACTION].
ACTION = "value"

TITLE = "Connect an Atlas org"
OUT_OF_DATE = "This form is out of date: run `/atlas-billing connect` again."
NO_TRIGGER = "Slack sent no trigger to open the form with; try again."
TIMED_OUT = (
    f"Atlas did not answer within {CHECK_SECONDS:.0f} seconds; nothing was stored. Try again."
)
KEY_UNUSABLE = (
    "The bot cannot encrypt credentials: its secret key is not usable. Nothing was stored; "
    "the operators have the details in the bot's log."
)


def _metadata(org_id: str, team_id: str, channel_id: str) -> str:
    return json.dumps({"org_id": org_id, "team_id": team_id, "channel_id": channel_id})


def notice_view(text: str, *, title: str = TITLE) -> dict[str, Any]:
    """A modal that only says something (no fields, a Close button)."""
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": title},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }


def opening_view(org_id: str) -> dict[str, Any]:
    """What ``connect`` opens at once, within the trigger's 3 seconds, before any check."""
    return notice_view(f"Checking that you may connect Atlas org `{org_id}`…")


def checking_view(*, org_id: str, team_id: str, channel_id: str) -> dict[str, Any]:
    """What a submission turns the modal into while Atlas is asked about the credentials."""
    view = notice_view(
        f"Trying these credentials on Atlas org `{org_id}`… Nothing is stored until Atlas "
        "accepts them."
    )
    view["private_metadata"] = _metadata(org_id, team_id, channel_id)
    return view


def connected_view(*, org_id: str, row: OrgCredential) -> dict[str, Any]:
    return notice_view(
        f"Connected: Atlas org `{org_id}` now uses {KIND_NAMES[row.kind]} (`{row.public_id}`). "
        "The secret is stored encrypted and cannot be shown again."
    )


def connect_view(
    *,
    org_id: str,
    team_id: str,
    channel_id: str,
    existing: OrgCredential | None = None,
    problem: str | None = None,
    kind: str | None = None,
    public_id: str | None = None,
) -> dict[str, Any]:
    """The modal: credential type, the public ID and the secret; where to report in the metadata.

    Shown again after Atlas refused a submission: ``problem`` says why, above the fields, and
    the type and public ID come back as typed (the secret never does).
    """
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
    chosen = next((o for o in options if o["value"] == kind), options[0])
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": intro}}]
    if problem:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f":warning: {problem}"}}
        )
    public = _text_input(
        Field.PUBLIC_ID,
        "Client ID or public key",
        "Service account: mdb_sa_id_… · API key: 8 lowercase letters",
        max_length=64,
    )
    if public_id:
        public["element"]["initial_value"] = public_id
    return {
        "type": "modal",
        "callback_id": CALLBACK_ID,
        "private_metadata": _metadata(org_id, team_id, channel_id),
        "title": {"type": "plain_text", "text": TITLE},
        "submit": {"type": "plain_text", "text": "Connect"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            *blocks,
            {
                "type": "input",
                "block_id": Field.KIND.value,
                "label": {"type": "plain_text", "text": "Credential type"},
                "element": {
                    "type": "radio_buttons",
                    "action_id": ACTION,
                    "options": options,
                    "initial_option": chosen,
                },
            },
            public,
            _text_input(
                Field.SECRET,
                "Client secret or private key",
                "Shown by Atlas only when it was created; stored encrypted.",
                max_length=256,
            ),
        ],
    }


def problem_text(problems: dict[Field, str]) -> str:
    """Field errors as one paragraph, for a modal shown again after the check."""
    return " ".join(problems.values())


def field_errors(problems: dict[Field, str]) -> dict[str, str]:
    """Errors keyed by block ID, as ``response_action: errors`` wants them."""
    return {field.value: text for field, text in problems.items()}


def atlas_refusal(exc: AtlasError, org_id: str) -> dict[Field, str]:
    """What an Atlas refusal during the check means, on the field to fix."""
    if isinstance(exc, Unauthorized | Forbidden) and exc.error_code in ATLAS_REMEDIES:
        return {Field.PUBLIC_ID: f"Atlas refused [{exc.error_code}]. {atlas_remedy(exc)}"}
    if isinstance(exc, Unauthorized):
        return {
            Field.SECRET: "Atlas refused these credentials (401). Check the ID and the secret, "
            "and that the key is neither expired nor limited to other IP addresses."
        }
    if isinstance(exc, Forbidden):
        return {
            Field.PUBLIC_ID: "Atlas accepted these credentials but they cannot read this org's "
            f"billing (403): give them the Organization Billing Viewer role on org {org_id}."
        }
    if isinstance(exc, NotFound):
        return {
            Field.PUBLIC_ID: f"Atlas knows no org {org_id} for these credentials (404): check "
            "the ORG_ID and that the credentials belong to that org."
        }
    return {Field.PUBLIC_ID: f"Atlas could not check these credentials: {explain(exc)}"}


def connected(*, user_id: str, org_id: str, row: OrgCredential) -> Message:
    """The channel's notice that an org was connected (or its credentials replaced)."""
    verb = "connected" if row.version == 1 else "replaced the credentials of"
    return notice(
        f"<@{user_id}> {verb} Atlas org `{org_id}` with {KIND_NAMES[row.kind]} "
        f"(`{row.public_id}`). The bot uses it for this org from now on; the secret is "
        "stored encrypted and cannot be shown again."
    )


def _option(value: str, text: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text}, "value": value}


def _text_input(field: Field, label: str, hint: str, *, max_length: int) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": field.value,
        "label": {"type": "plain_text", "text": label},
        "hint": {"type": "plain_text", "text": hint},
        "element": {"type": "plain_text_input", "action_id": ACTION, "max_length": max_length},
    }
