"""``pending`` and ``invoice``: what an org has spent, posted for the whole channel."""

from __future__ import annotations

import asyncio
import functools
import tempfile
from pathlib import Path

from slack_sdk.errors import SlackRequestError

from bot.atlas.invoice_csv import summarise_invoice_csv_file
from bot.render.blocks import invoice_message, pending_message
from bot.render.explain import upload_error
from bot.services import links, spend
from bot.slack.membership import as_member
from handlers.grammar import Invoice, Pending
from handlers.invocation import Invocation


async def pending(invocation: Invocation, command: Pending) -> None:
    """Month-to-date spend: total and biggest projects and SKUs"""
    deps = invocation.deps
    linked = await links.linked_orgs(deps, invocation.team_id, invocation.channel_id)
    orgs = links.choose_orgs(linked, command.org_id)
    summaries = await asyncio.gather(
        *(deps.pending_reads.run(o, functools.partial(spend.org_pending, deps, o)) for o in orgs)
    )
    await invocation.post(pending_message(summaries))


async def invoice(invocation: Invocation, command: Invoice) -> None:
    """An invoice summary, with its CSV uploaded to the channel

    The summary for everyone, then the CSV as a file (streamed to disk, never held whole).
    """
    deps = invocation.deps
    linked = await links.linked_orgs(deps, invocation.team_id, invocation.channel_id)
    org_id = links.choose_org(linked, command.org_id)
    client = await deps.credentials.client(org_id)
    summary = await spend.invoice(client, org_id, command.invoice_id)
    with tempfile.TemporaryDirectory(prefix="atlas-invoice-") as tmp:
        path = Path(tmp) / f"atlas-invoice-{command.invoice_id}.csv"
        with path.open("wb") as sink:
            await client.download_invoice_csv(org_id, command.invoice_id, sink)
        rows = (await asyncio.to_thread(summarise_invoice_csv_file, path)).row_count
        await invocation.post(invoice_message(summary, csv_rows=rows))

        async def share() -> None:
            await deps.slack.files_upload_v2(
                channel=invocation.channel_id,
                file=str(path),
                filename=path.name,
                title=f"Atlas invoice {command.invoice_id} ({rows:,} rows)",
            )

        try:
            # The summary went out with chat:write.public; sharing a file needs membership,
            # so in a public channel the bot joins by itself.
            await as_member(deps, invocation.channel_id, share)
        except SlackRequestError as exc:
            # The upload POST failed (a 5xx, or a 429 past slack_sdk's retries): reported like a
            # refusal of the Web API steps, not as an unexpected error.
            raise upload_error(exc) from exc
