"""Cost Explorer in chat: start a query from Slack, then poll it until Atlas has the result.

Every pending query lives in the database (token, channel, requester,
parameters, the message to update, the next poll time), so a restart loses
nothing. The *poll* job claims due queries with a lease, polls each once, and
on a ready result updates the "started" message in place before recording the
outcome; ``chat.update`` is idempotent, so a crash between the two repeats the
same update rather than posting twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date, timedelta

from slack_sdk.errors import SlackApiError

import storage.costs
from bot.atlas import (
    AtlasAPIError,
    AtlasError,
    CostQuery,
    InvalidInput,
    NotReady,
    RateLimited,
    ServerError,
)
from bot.deps import Deps
from bot.render.blocks import (
    Message,
    costs_failed_message,
    costs_result_message,
    costs_started_message,
)
from bot.render.explain import AUTH_ERRORS, Refusal, explain, slack_error
from bot.services import digests, links, spend
from storage.models import CostQuery as StoredQuery
from storage.models import QueryStatus, to_json

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
MAX_AGE = timedelta(hours=2)
# The poll job's lease on the queries it claims (at least; four poll intervals if longer):
# long enough for one poll, short enough that a replica killed mid-poll delays the query by
# seconds, not minutes.
LEASE_SECONDS = 30.0
# What a tick keeps of its lease for the rest of the work on a result (Slack, the database).
LEASE_MARGIN_SECONDS = 5.0
# Open `costs` queries allowed at once, per person and per channel (see `_check_quota`).
MAX_OPEN_PER_USER = 3
MAX_OPEN_PER_CHANNEL = 10
CLAIM_LIMIT = 50


def backoff(poll_seconds: float, attempts: int) -> float:
    """Seconds until the next poll: grows by half each time, capped at five minutes."""
    return min(poll_seconds * 1.5**attempts, MAX_BACKOFF_SECONDS)


async def start(
    deps: Deps,
    *,
    team_id: str,
    channel_id: str,
    user_id: str,
    org_id: str,
    start: date,
    end: date,
    group_by: str | None,
) -> StoredQuery:
    """Post the "started" message, start the query at Atlas, store the token with that message.

    An Atlas error turns the "started" message into the error and propagates.
    """
    query = CostQuery(start=start, end=end, group_by=group_by, organizations=(org_id,))
    await _check_quota(deps, team_id=team_id, channel_id=channel_id, user_id=user_id, query=query)
    started = costs_started_message(org_id, start, end, group_by, user_id)
    posted = await deps.slack.chat_postMessage(channel=channel_id, **started.kwargs())
    message_ts = posted["ts"]
    try:
        atlas = await deps.credentials.client(org_id)
        token = await atlas.create_cost_query(org_id, query)
    except AtlasError as exc:
        failed = costs_failed_message(org_id, start, end, explain(exc), user_id)
        await deps.slack.chat_update(channel=channel_id, ts=message_ts, **failed.kwargs())
        raise
    now = deps.clock()
    return await deps.db.run(
        storage.costs.add_query,
        token=token,
        org_id=org_id,
        team_id=team_id,
        channel_id=channel_id,
        requested_by=user_id,
        params=query.body(),
        message_ts=message_ts,
        next_poll_at=now + timedelta(seconds=deps.settings.BOT_POLL_SECONDS),
        now=now,
    )


async def _check_quota(
    deps: Deps, *, team_id: str, channel_id: str, user_id: str, query: CostQuery
) -> None:
    """Refuse a query identical to one still running here, or one too many.

    Anyone in a linked channel may start queries, and each is polled for up to two
    hours against the org's Atlas rate limit, which alerts and digests share: a cap
    per person and per channel keeps one member from crowding them out.
    """
    running = await deps.db.run(
        storage.costs.open_chat_queries, team_id=team_id, channel_id=channel_id
    )
    body = to_json(query.body())
    for row in running:
        if row.params == body:
            raise Refusal(
                f"The same query (started by <@{row.requested_by}>) is still running: its "
                "result will be posted here."
            )
    mine = sum(row.requested_by == user_id for row in running)
    if mine >= MAX_OPEN_PER_USER:
        raise Refusal(
            f"You have {mine} Cost Explorer queries running here; wait for one to finish."
        )
    if len(running) >= MAX_OPEN_PER_CHANNEL:
        raise Refusal(
            f"This channel has {len(running)} Cost Explorer queries running; wait for one "
            "to finish."
        )


@dataclass(frozen=True)
class PollReport:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    expired: int = 0
    waiting: int = 0


def poll_wait_seconds(deps: Deps, lease: float) -> float:
    """How long one poll may wait for the org's rate limit (the request budget, a 429's
    ``Retry-After``, a backoff) without outliving the lease: the lease, less one poll
    request at its longest, less a margin. A longer wait reschedules the query instead,
    so no other replica claims it while this one sleeps."""
    return max(0.0, lease - deps.atlas.poll_attempt_seconds - LEASE_MARGIN_SECONDS)


async def poll_due(deps: Deps) -> PollReport:
    """The *poll* job: claim due queries and poll each once, concurrently."""
    lease = max(LEASE_SECONDS, deps.settings.BOT_POLL_SECONDS * 4)
    max_wait = poll_wait_seconds(deps, lease)
    rows = await deps.db.run(
        storage.costs.claim_due,
        now=deps.clock(),
        owner=deps.worker,
        lease_seconds=lease,
        limit=CLAIM_LIMIT,
    )
    outcomes = await asyncio.gather(*(_poll_one(deps, row, max_wait) for row in rows))
    return PollReport(
        claimed=len(rows),
        done=outcomes.count(QueryStatus.DONE),
        failed=outcomes.count(QueryStatus.FAILED),
        expired=outcomes.count(QueryStatus.EXPIRED),
        waiting=outcomes.count(QueryStatus.PENDING),
    )


def _dates(row: StoredQuery) -> tuple[date, date, str | None]:
    body = row.request_body()
    return (
        date.fromisoformat(body["startDate"]),
        date.fromisoformat(body["endDate"]),
        body.get("groupBy"),
    )


async def _poll_one(deps: Deps, row: StoredQuery, max_wait: float) -> QueryStatus:
    start, end, group_by = _dates(row)
    now = deps.clock()
    not_before = 0.0
    try:
        atlas = await deps.credentials.client(row.org_id)
        result = await atlas.cost_result(row.org_id, row.token, max_wait=max_wait)
    except AtlasError as exc:
        if _permanent(exc):
            return await _give_up(deps, row, QueryStatus.FAILED, explain(exc))
        if now - row.created_at > MAX_AGE:
            # Not "did not finish": the last poll failed, say how (e.g. Atlas unreachable).
            reason = f"Polling stopped after two hours: {explain(exc)}"
            return await _give_up(deps, row, QueryStatus.EXPIRED, reason)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            # Longer than this tick may wait: the next poll comes after Retry-After instead.
            not_before = exc.retry_after
            log.info("cost query %s: rate limited, polling again in %.0fs", row.id, not_before)
        else:
            log.warning("cost query %s: %s; polling again later", row.id, exc)
        return await _reschedule(deps, row, not_before=not_before)
    if isinstance(result, NotReady):
        if now - row.created_at > MAX_AGE:
            reason = "Atlas did not finish this query within two hours; start it again."
            return await _give_up(deps, row, QueryStatus.EXPIRED, reason)
        return await _reschedule(deps, row)
    if row.purpose == "digest":
        await digests.complete(deps, row, result)
        return QueryStatus.DONE
    summary = spend.summarise_costs(result, group_by)
    message = costs_result_message(row.org_id, start, end, summary, row.requested_by)
    return await _finish(deps, row, message, QueryStatus.DONE)


async def _give_up(deps: Deps, row: StoredQuery, status: QueryStatus, reason: str) -> QueryStatus:
    """Say in the channel that the query ended without a result, and record why."""
    if row.purpose == "digest":
        await deps.db.run(
            digests.record_failure, row=row, owner=deps.worker, status=status, reason=reason
        )
        return status
    start, end, _ = _dates(row)
    message = costs_failed_message(row.org_id, start, end, reason, row.requested_by)
    return await _finish(deps, row, message, status, error=reason)


def _permanent(exc: AtlasError) -> bool:
    """Errors that polling again will not cure (bad token, no access, unreadable answer)."""
    if isinstance(exc, RateLimited | ServerError):
        return False
    return isinstance(exc, AtlasAPIError | InvalidInput)


async def _reschedule(deps: Deps, row: StoredQuery, *, not_before: float = 0.0) -> QueryStatus:
    """Release the query until its next poll: the backoff, or ``not_before`` seconds if later."""
    assert row.id is not None  # claimed queries come from the database
    delay = max(backoff(deps.settings.BOT_POLL_SECONDS, row.attempts), not_before)
    await deps.db.run(
        storage.costs.reschedule,
        id=row.id,
        owner=deps.worker,
        next_poll_at=deps.clock() + timedelta(seconds=delay),
    )
    return QueryStatus.PENDING


async def _finish(
    deps: Deps, row: StoredQuery, message: Message, status: QueryStatus, error: str | None = None
) -> QueryStatus:
    """Show the outcome in the channel, then record it; a Slack refusal is recorded too."""
    assert row.id is not None  # claimed queries come from the database
    try:
        if row.message_ts:
            await deps.slack.chat_update(
                channel=row.channel_id, ts=row.message_ts, **message.kwargs()
            )
        else:
            posted = await deps.slack.chat_postMessage(channel=row.channel_id, **message.kwargs())
            await deps.db.run(storage.costs.set_message, id=row.id, message_ts=posted["ts"])
    except SlackApiError as exc:
        refusal = slack_error(exc)
        unavailable = exc.response.status_code == 429 or exc.response.status_code >= 500
        waits = unavailable or refusal in AUTH_ERRORS
        if waits and deps.clock() - row.created_at <= MAX_AGE:
            if unavailable:
                log.warning("cost query %s: Slack is unavailable (%s); retrying", row.id, refusal)
            else:
                # The operators fix the token; the result waits for them (until MAX_AGE).
                log.error("cost query %s: Slack refused the bot's token (%s)", row.id, refusal)
            return await _reschedule(deps, row)
        # The channel is gone or the bot was removed, or Slack has not taken the outcome
        # within MAX_AGE: nobody can be told, so stop polling.
        log.warning("cost query %s: Slack refused the result: %s", row.id, refusal)
        await links.slack_refused(
            deps,
            team_id=row.team_id,
            channel_id=row.channel_id,
            error=refusal,
            method="cost query result",
        )
        status = QueryStatus.EXPIRED if waits else QueryStatus.FAILED
        error = f"slack: {refusal}"
    await deps.db.run(
        storage.costs.finish, id=row.id, owner=deps.worker, status=status, error=error
    )
    return status
