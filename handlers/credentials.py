"""``connect ORG_ID``: a modal for an org's own Atlas credentials, tried on Atlas, stored encrypted.

The command (admins only, checked before dispatch) opens the modal; its
submission is validated, tried against Atlas and only then stored, encrypted
with ``BOT_SECRET_KEY`` (``bot.services.credentials``). Problems come back as
``response_action: errors`` on the field concerned, with nothing stored. The
secret is never echoed, logged or put in an audit entry, not even its length.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.errors import SlackApiError

from bot.atlas import AtlasError, InvalidInput
from bot.atlas import validate_org_id as checked_org_id
from bot.core.secrets import SecretError
from bot.deps import Deps
from bot.render import credentials as render
from bot.render.explain import EXPLAINED, explain
from bot.services import credentials
from bot.services.credentials import Field, TypedCredentials
from bot.services.links import admin_check, admin_refusal, require_admin
from handlers.grammar import Connect
from handlers.invocation import Invocation

log = logging.getLogger(__name__)

ADMIN_CHECK_SECONDS = 2.0


# ---- the command: open the modal ---------------------------------------------------------------


async def connect(invocation: Invocation, command: Connect) -> None:
    """Store Atlas credentials for an organization (encrypted, never shown again)

    The modal opens first: the command's trigger is valid for 3 seconds from the moment Slack
    sent it (bolt-python #772: a ``users.info`` before ``views.open`` can outlast it). Who may
    connect, and from which channel, is checked after, and the modal then becomes the form or
    says why not.
    """
    deps = invocation.deps
    if not invocation.trigger_id:
        await invocation.ephemeral(render.NO_TRIGGER)
        return
    opened = await deps.slack.views_open(
        trigger_id=invocation.trigger_id, view=render.opening_view(command.org_id)
    )
    view_id = (opened.get("view") or {}).get("id", "")
    try:
        await require_admin(
            deps, invocation.user_id, invocation.team_id, "connect Atlas credentials"
        )
        existing = await credentials.connect_from(
            deps,
            org_id=command.org_id,
            team_id=invocation.team_id,
            channel_id=invocation.channel_id,
        )
    except EXPLAINED as exc:
        await _show(deps, view_id, render.notice_view(explain(exc)))
        raise
    view = render.connect_view(
        org_id=command.org_id,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        existing=existing,
    )
    await deps.slack.views_update(view_id=view_id, view=view)


async def _show(deps: Deps, view_id: str, view: dict[str, Any]) -> None:
    """Put `view` up in the open modal; if Slack refuses (the person closed it), log and go on."""
    try:
        await deps.slack.views_update(view_id=view_id, view=view)
    except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
        log.warning("could not update the connect modal %s: %s", view_id, exc)


# ---- the submission --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the modal was opened from, as carried in its private_metadata."""

    org_id: str
    team_id: str
    channel_id: str


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


def read_form(values: dict[str, Any]) -> TypedCredentials:
    """The submitted values, stripped of surrounding blanks."""

    def element(field: Field) -> dict[str, Any]:
        found = (values.get(field.value) or {}).get(render.ACTION)
        return found if isinstance(found, dict) else {}

    kind = str((element(Field.KIND).get("selected_option") or {}).get("value") or "")
    public_id = str(element(Field.PUBLIC_ID).get("value") or "").strip()
    secret = str(element(Field.SECRET).get("value") or "").strip()
    return TypedCredentials(kind=kind, public_id=public_id, secret=secret)


async def check_and_store(
    deps: Deps, view_id: str, target: Target, user_id: str, typed: TypedCredentials
) -> None:
    """After the submission: try the credentials on Atlas, store them, show the outcome."""

    def again(problem: str) -> dict[str, Any]:
        return render.connect_view(
            org_id=target.org_id,
            team_id=target.team_id,
            channel_id=target.channel_id,
            problem=problem,
            kind=typed.kind,
            public_id=typed.public_id,
        )

    try:
        await credentials.try_on_atlas(deps, target.org_id, typed)
    except TimeoutError:
        await _show(deps, view_id, again(render.TIMED_OUT))
        return
    except AtlasError as exc:
        await _show(
            deps, view_id, again(render.problem_text(render.atlas_refusal(exc, target.org_id)))
        )
        return
    try:
        row = await credentials.store(
            deps,
            org_id=target.org_id,
            team_id=target.team_id,
            channel_id=target.channel_id,
            user_id=user_id,
            typed=typed,
        )
    except SecretError as exc:
        log.error("cannot store Atlas credentials for org %s: %s", target.org_id, exc)
        await _show(deps, view_id, again(render.KEY_UNUSABLE))
        return
    except EXPLAINED as exc:  # the database refused: nothing was stored
        await _show(deps, view_id, again(explain(exc)))
        return
    await _show(deps, view_id, render.connected_view(org_id=target.org_id, row=row))
    message = render.connected(user_id=user_id, org_id=target.org_id, row=row)
    try:
        await deps.slack.chat_postMessage(channel=target.channel_id, **message.kwargs())
    except SlackApiError as exc:
        log.warning(
            "stored credentials for org %s but could not say so in %s: %s",
            target.org_id,
            target.channel_id,
            exc.response.get("error") if exc.response else exc,
        )


def register(app: AsyncApp, deps: Deps) -> None:
    async def refuse(ack: AsyncAck, problems: dict[Field, str]) -> None:
        await ack(response_action="errors", errors=render.field_errors(problems))

    async def on_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        user_id = str((body.get("user") or {}).get("id") or "")
        team_id = str((body.get("team") or {}).get("id") or "")
        try:
            target = read_target(view.get("private_metadata") or "")
        except ValueError:
            target = None
        if target is None or target.team_id != team_id:
            await refuse(ack, {Field.PUBLIC_ID: render.OUT_OF_DATE})
            return
        try:
            # The one Slack call before the answer: bounded, so the answer still comes within
            # Slack's 3 seconds for a submission (a late one shows the person an error).
            async with asyncio.timeout(ADMIN_CHECK_SECONDS):
                check = await admin_check(deps, user_id, team_id)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            await refuse(ack, {Field.PUBLIC_ID: explain(exc)})
            return
        if check != "admin":
            await refuse(ack, {Field.PUBLIC_ID: admin_refusal(check, "connect Atlas credentials")})
            return
        typed = read_form((view.get("state") or {}).get("values") or {})
        problems = credentials.problems(typed)
        if problems:
            await refuse(ack, problems)
            return
        # Answered at once (Slack gives a submission 3 seconds); Atlas is asked afterwards,
        # while the modal says so, and the modal then shows how it went.
        await ack(
            response_action="update",
            view=render.checking_view(
                org_id=target.org_id, team_id=target.team_id, channel_id=target.channel_id
            ),
        )
        await deps.background.run(
            check_and_store(deps, str(view.get("id") or ""), target, user_id, typed)
        )

    app.view(render.CALLBACK_ID)(on_submit)
