"""The outbox: every alert and digest is posted from here, exactly once.

Producers insert a message with a unique key (``alert:{link}:{period}:{level}``,
``digest:{link}:{YYYY-MM}``) in the same transaction that decided to post it,
so a decision is never lost and never taken twice. The *outbox* job claims due
messages with a lease and posts them:

1. a chart, if any, is uploaded first without sharing it (``files_upload_v2``
   with no channel); re-uploading after a crash only leaves an unused file;
2. the message goes out with ``chat.postMessage`` carrying the key in Slack
   message metadata;
3. before a retry of a message that may already have gone out (a claim with
   ``attempts > 1``: the previous worker died or timed out after sending), the
   channel's recent history is searched for that key; if found, it is recorded
   as sent instead of being posted again.

Slack 429s and 5xx are retried (slack_sdk's retry handlers first, then the
outbox with backoff); refusals that will not heal (channel gone, bot removed,
archived, bad token) mark the message failed and are logged.
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


async def _already_posted(deps: Deps, row: OutboxMessage) -> str | None:
    """The ts of a message carrying this key, if an earlier attempt did post it."""
    oldest = f"{row.created_at.timestamp() - 60:.6f}"
    cursor = None
    for _ in range(5):  # at most 1,000 messages since the message was queued
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
                and meta.get("event_payload", {}).get("key") == row.key
            ):
                ts: str | None = message.get("ts")
                return ts
        cursor = (page.get("response_metadata") or {}).get("next_cursor")
        if not page.get("has_more") or not cursor:
            return None
    return None


async def _deliver(deps: Deps, row: OutboxMessage) -> str:
    assert row.id is not None  # claimed rows come from the database
    payload = json.loads(row.payload)
    try:
        if row.attempts > 1 and (ts := await _already_posted(deps, row)):
            await deps.db.run(outbox.mark_sent, id=row.id, owner=deps.worker, message_ts=ts)
            deps.metrics.posted(row.key)
            log.info("outbox %s was already posted (ts %s); recorded, not reposted", row.key, ts)
            return "recovered"
        file_id = row.file_id
        if row.attachment and not file_id:
            uploaded = await deps.slack.files_upload_v2(
                content=row.attachment,
                filename=row.attachment_name or "chart.png",
                title=payload.get("image_alt") or row.attachment_name,
            )
            file_id = uploaded["file"]["id"]
            await deps.db.run(outbox.set_file, id=row.id, owner=deps.worker, file_id=file_id)
        blocks = list(payload.get("blocks") or [])
        if file_id:
            blocks.append(
                {
                    "type": "image",
                    "slack_file": {"id": file_id},
                    "alt_text": payload.get("image_alt") or "chart",
                }
            )
        posted = await deps.slack.chat_postMessage(
            channel=row.channel_id,
            text=payload.get("text", ""),
            blocks=blocks or None,
            metadata=metadata(row.key),
        )
    except SlackApiError as exc:
        return await _failed_attempt(deps, row, exc)
    except SlackRequestError as exc:  # the chart's upload POST failed (a 5xx, or a 429)
        return await _failed_attempt(deps, row, upload_error(exc))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # The request may or may not have reached Slack: the retry checks the history first.
        log.warning("outbox %s: no answer from Slack (%s); retrying", row.key, exc)
        await deps.db.run(
            outbox.retry_later,
            id=row.id,
            owner=deps.worker,
            not_before=deps.clock() + timedelta(seconds=backoff(row.attempts)),
            error=f"transport: {type(exc).__name__}",
        )
        return "retried"
    await deps.db.run(outbox.mark_sent, id=row.id, owner=deps.worker, message_ts=posted["ts"])
    deps.metrics.posted(row.key)
    return "sent"


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
    )
    return "retried"
