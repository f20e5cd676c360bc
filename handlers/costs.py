"""``costs``: start a Cost Explorer query; the *poll* job posts the result when Atlas has it."""

from __future__ import annotations

from bot.services import links
from bot.services.costs import start
from handlers.grammar import Costs
from handlers.invocation import Invocation


async def costs(invocation: Invocation, command: Costs) -> None:
    """A Cost Explorer query (START/END as YYYY-MM, END exclusive); the result is posted when ready"""
    deps = invocation.deps
    linked = await links.linked_orgs(deps, invocation.team_id, invocation.channel_id)
    org_id = links.choose_org(linked, command.org_id)
    await start(
        deps,
        team_id=invocation.team_id,
        channel_id=invocation.channel_id,
        user_id=invocation.user_id,
        org_id=org_id,
        start=command.start,
        end=command.end,
        group_by=command.group_by,
    )
