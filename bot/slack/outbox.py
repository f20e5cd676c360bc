"""The outbox: every alert and digest is posted from here, exactly once.

Producers insert a message with a unique key (``alert:{link}:{period}:{level}``,
``digest:{link}:{YYYY-MM}``) in the same transaction that decided to post it,
so a decision is never lost and never taken twice. The *outbox* job claims due
messages with a lease and posts them:

1. the message goes out with ``chat.postMessage`` carrying the key in Slack
   message metadata, after ``mark_sending`` is committed. The Slack client never
   re-sends a post by itself after a connection error (``bot/slack/client.py``).
2. A message claimed again that may already be in the channel (its sender crashed
   mid-post, or the answer was lost: ``storage.outbox.may_have_posted``) is looked
   up first, in a bounded read of the channel's recent history (joining a public
   channel the bot is not in, since history needs membership). Found: recorded as
   sent. Not found: posted. No lookup possible (rate limited, not a member, the
   history longer than the search): posted again with a note that it may repeat an
   earlier post. Never lost for a failed lookup, never silently doubled.
3. A chart, if any, is shared in the posted message's thread (``files_upload_v2``
   with the channel, so every member sees it: a chart uploaded without a channel and
   referenced as ``slack_file`` is refused as ``invalid_blocks`` until it is shared and
   processed). The message has been delivered by then: a refused chart is logged and
   costs nothing else.

Slack 429s and 5xx are retried (slack_sdk's retry handlers first, then the
outbox with backoff); refusals that will not heal (channel gone, archived, bad
blocks) mark the message failed and are logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError

from bot.core.retry_after import parse_retry_after
from bot.deps import Deps
from bot.render.explain import AUTH_ERRORS, slack_error, upload_error
from bot.services import links
from bot.slack.membership import as_member
from storage import outbox
from storage.models import OutboxMessage

log = logging.getLogger(__name__)

EVENT_TYPE = "atlas_billing_post"
LEASE_SECONDS = 120.0
MAX_ATTEMPTS = 12
# Refusals that retrying cannot cure for this message. Auth errors are not among them: a
# revoked or mistyped token is fixed by the operators, and the message must survive until then.
PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "invalid_blocks",
        "no_text",
        "restricted_action",
    }
)


def backoff(attempts: int) -> float:
    delay: float = 5.0 * 2 ** max(attempts - 1, 0)
    return min(delay, 600.0)


@dataclass(frozen=True)
class OutboxReport:
    claimed: int = 0
    sent: int = 0
    recovered: int = 0
    retried: int = 0
    failed: int = 0


async def deliver_due(deps: Deps) -> OutboxReport:
    """The *outbox* job: claim due messages and deliver each (concurrently)."""
    rows = await deps.db.run(
        outbox.claim_due,
        now=deps.clock(),
        owner=deps.worker,
        lease_seconds=LEASE_SECONDS,
        limit=50,
    )
    outcomes = await asyncio.gather(*(_deliver(deps, row) for row in rows))
    return OutboxReport(
        claimed=len(rows),
        sent=outcomes.count("sent"),
        recovered=outcomes.count("recovered"),
        retried=outcomes.count("retried"),
        failed=outcomes.count("failed"),
    )


def metadata(key: str) -> dict[str, Any]:
    return {"event_type": EVENT_TYPE, "event_payload": {"key": key}}


# The history search: at most this many pages. Slack's restricted history tier (some
# distributed apps since May 2025) answers at most 15 messages a page and one request a
# minute (https://api.slack.com/changelog/2025-05-terms-rate-limit-update-and-faq): a search
# that waits out the limit page after page would hold the message back for many minutes.
HISTORY_PAGES = 3

POSSIBLE_REPEAT = (
    "_Slack did not confirm an earlier attempt to post this message; if it appears twice, "
    "it is the same one._"
)


@dataclass(frozen=True)
class Lookup:
    """What a search of the channel found: the message's ``ts``, nothing, or no answer."""

    ts: str | None = None
    unknown: str | None = None  # why the search could not decide


async def _find_posted(deps: Deps, row: OutboxMessage) -> Lookup:
    """Look for a message carrying this key in the channel's recent history."""

    async def search() -> Lookup:
        oldest = f"{row.created_at.timestamp() - 60:.6f}"
        cursor = None
        for _ in range(HISTORY_PAGES):
            page = await deps.slack.conversations_history(
                channel=row.channel_id,
                oldest=oldest,
                limit=200,
                include_all_metadata=True,
                cursor=cursor,
            )
            messages: list[dict[str, Any]] = page.get("messages", [])
            for message in messages:
                meta = message.get("metadata") or {}
                if (
                    meta.get("event_type") == EVENT_TYPE
                    and (meta.get("event_payload") or {}).get("key") == row.key
                ):
                    return Lookup(ts=message.get("ts"))
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not page.get("has_more") or not cursor:
                return Lookup()
        return Lookup(unknown=f"more than {HISTORY_PAGES} pages of history since it was queued")

    try:
        return await as_member(deps, row.channel_id, search)
    except SlackApiError as exc:
        return Lookup(unknown=f"history: {slack_error(exc)}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Lookup(unknown=f"history: {type(exc).__name__}")


def _possible_repeat(payload: dict[str, Any]) -> dict[str, Any]:
    """The message marked as one that may repeat an earlier, unconfirmed post."""
    blocks = list(payload.get("blocks") or [])
    if blocks:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": POSSIBLE_REPEAT}]}
        )
    text = payload.get("text", "")
    return {**payload, "blocks": blocks, "text": f"{text}\n{POSSIBLE_REPEAT}" if text else text}


async def _deliver(deps: Deps, row: OutboxMessage) -> str:
    assert row.id is not None  # claimed rows come from the database
    payload = json.loads(row.payload)
    repeat = False
    if outbox.may_have_posted(row):
        found = await _find_posted(deps, row)
        if found.ts:
            await deps.db.run(outbox.mark_sent, id=row.id, owner=deps.worker, message_ts=found.ts)
            deps.metrics.posted(row.key)
            log.info(
                "outbox %s was already posted (ts %s); recorded, not reposted", row.key, found.ts
            )
            return "recovered"
        if found.unknown:
            log.warning(
                "outbox %s may already be in %s but cannot be looked up (%s); posting it again "
                "marked as a possible repeat",
                row.key,
                row.channel_id,
                found.unknown,
            )
            payload, repeat = _possible_repeat(payload), True
    meta = metadata(row.key)
    if repeat:
        meta["event_payload"]["possible_repeat"] = True
    try:
        await deps.db.run(outbox.mark_sending, id=row.id, owner=deps.worker, now=deps.clock())
        posted = await deps.slack.chat_postMessage(
            channel=row.channel_id,
            text=payload.get("text", ""),
            blocks=payload.get("blocks") or None,
            metadata=meta,
        )
    except SlackApiError as exc:
        return await _failed_attempt(deps, row, exc)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # The post may or may not have reached Slack: the next attempt looks it up first.
        log.warning("outbox %s: no answer from Slack (%s); retrying", row.key, exc)
        await deps.db.run(
            outbox.retry_later,
            id=row.id,
            owner=deps.worker,
            not_before=deps.clock() + timedelta(seconds=backoff(row.attempts)),
            error=f"{outbox.TRANSPORT} {type(exc).__name__}",
            unconfirmed=True,
        )
        return "retried"
    if row.attachment:  # before mark_sent, under the lease: a crash here is found by the lookup
        await _share_chart(deps, row, payload, thread_ts=posted["ts"])
    await deps.db.run(outbox.mark_sent, id=row.id, owner=deps.worker, message_ts=posted["ts"])
    deps.metrics.posted(row.key)
    return "sent"


async def _share_chart(
    deps: Deps, row: OutboxMessage, payload: dict[str, Any], *, thread_ts: str
) -> None:
    """Share the chart in the posted message's thread; a refusal is logged, nothing more."""
    assert row.id is not None and row.attachment is not None

    async def share() -> Any:
        return await deps.slack.files_upload_v2(
            channel=row.channel_id,
            thread_ts=thread_ts,
            content=row.attachment,
            filename=row.attachment_name or "chart.png",
            title=payload.get("image_alt") or row.attachment_name,
        )

    try:
        uploaded = await as_member(deps, row.channel_id, share)
    except SlackApiError as exc:
        reason = slack_error(exc)
        await links.slack_refused(
            deps, team_id=row.team_id, channel_id=row.channel_id, error=reason, method="outbox post"
        )
    except SlackRequestError as exc:  # the upload POST itself failed (a 5xx, or a 429)
        response = upload_error(exc).response
        reason = f"the upload answered HTTP {response.status_code if response else 'error'}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = type(exc).__name__
    else:
        file_id = (uploaded.get("file") or {}).get("id")
        if file_id:
            await deps.db.run(outbox.set_file, id=row.id, owner=deps.worker, file_id=file_id)
        return
    log.warning(
        "outbox %s was posted without its chart: Slack refused the chart (%s)", row.key, reason
    )


async def _failed_attempt(deps: Deps, row: OutboxMessage, exc: SlackApiError) -> str:
    assert row.id is not None  # claimed rows come from the database
    error = slack_error(exc)
    status = exc.response.status_code if exc.response is not None else 0
    await links.slack_refused(
        deps, team_id=row.team_id, channel_id=row.channel_id, error=error, method="outbox post"
    )
    if error in AUTH_ERRORS:
        # Operators fix tokens and scopes; until then the message waits, however long that is.
        log.error("outbox %s: Slack refused the bot's token (%s); kept for later", row.key, error)
    elif (
        error in PERMANENT
        or (400 <= status < 500 and status != 429)
        # Only a refusal Slack has no word for runs out of attempts: a 429 or a 5xx means
        # "later", however long the outage, and alerts must outlive it.
        or (row.attempts >= MAX_ATTEMPTS and status < 400)
    ):
        log.error("outbox %s: Slack refused it for good (%s); not retried", row.key, error)
        await deps.db.run(outbox.mark_failed, id=row.id, owner=deps.worker, error=f"slack: {error}")
        return "failed"
    retry_after = exc.response.headers.get("Retry-After") if exc.response is not None else None
    delay = parse_retry_after(retry_after)
    if delay is None:
        delay = backoff(row.attempts)
    if error not in AUTH_ERRORS:
        log.warning(
            "outbox %s: Slack answered %s %s; retrying in %.0fs", row.key, status, error, delay
        )
    await deps.db.run(
        outbox.retry_later,
        id=row.id,
        owner=deps.worker,
        not_before=deps.clock() + timedelta(seconds=delay),
        error=f"slack: {status} {error}",
        # A 5xx may come after Slack carried the post out; a 429 or a refusal means it did not.
        unconfirmed=status >= 500,
    )
    return "retried"
