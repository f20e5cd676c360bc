"""Several replicas and crashes: every alert and digest is posted exactly once.

Real ``billing-bot serve`` processes (see ``test_restart``) share one database, the
sandbox Atlas and the fake Slack; they are killed with SIGKILL at the worst moments
and started again. What is counted is what Slack received: ``chat.postMessage``
calls grouped by the key the outbox puts in the message metadata
(``alert:{link}:{period}:{level}``, ``digest:{link}:{YYYY-MM}``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import select

import storage.digests
from bot.core.schedule import next_run, reported_month
from bot.runtime.jobs import JOBS
from storage import channel_config, links, thresholds
from storage.models import Alert, CostQuery, DigestSchedule, OutboxMessage
from tests.app.conftest import CHANNEL, OTHER_CHANNEL, TEAM
from tests.app.test_restart import ServeProcess, _env, _free_port, _wait
from tests.fakes.clock import now

# Processes and crashes, not dates: on the 15th of TODAY's month there is month-to-date spend
# for every alert to cross (the digests and their months are date-tested in test_digests).
pytestmark = pytest.mark.as_of(day=15)

ONCALL = "U0ONCALL"
SCHEDULE = ("1", 9, 0)  # day 1 at 09:00 UTC
LOW_THRESHOLD_CENTS = 1_000  # $10: every sandbox org is far past 100% of it


# ---- set-up ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    link_ids: list[int]
    alert_keys: set[str]
    digest_keys: set[str]


def _seed(db, sandbox, org_ids, channels, *, threshold=True, digest=True) -> Seeded:
    """Links, thresholds, on-call and due digest schedules, in one transaction (as replicas
    poll the database, they find all of it at once or nothing)."""
    due = now() - timedelta(minutes=1)
    link_ids, alert_keys, digest_keys = [], set(), set()
    with db.session() as session:
        for channel in channels:
            channel_config.set_oncall(
                session,
                team_id=TEAM,
                channel_id=channel,
                kind="user",
                target_id=ONCALL,
                updated_by="U_ADMIN",
            )
        for org_id in org_ids:
            period = f"{sandbox.data.org(org_id).pending.start:%Y-%m}"
            for channel in channels:
                link, _ = links.add_link(
                    session, team_id=TEAM, channel_id=channel, org_id=org_id, created_by="U_ADMIN"
                )
                assert link.id is not None
                link_ids.append(link.id)
                if threshold:
                    thresholds.set_threshold(
                        session,
                        link_id=link.id,
                        amount_cents=LOW_THRESHOLD_CENTS,
                        updated_by="U_ADMIN",
                    )
                    # 50, 80 and 100% are crossed together: one message, for the highest.
                    alert_keys.add(f"alert:{link.id}:{period}:100")
                if digest:
                    day, hour, minute = SCHEDULE
                    storage.digests.set_schedule(
                        session,
                        link_id=link.id,
                        day=day,
                        hour=hour,
                        minute=minute,
                        next_run_at=due,
                        updated_by="U_ADMIN",
                    )
                    digest_keys.add(f"digest:{link.id}:{reported_month(due):%Y-%m}")
    return Seeded(link_ids, alert_keys, digest_keys)


def _serve_env(sandbox, fake, db, **settings: float) -> dict[str, str]:
    env = _env(sandbox, fake, db)
    env.update({name: str(value) for name, value in settings.items()})
    return env


def _start(env, tmp_path, n: int) -> list[ServeProcess]:
    """``n`` serve processes started side by side (each waits for its own /healthz)."""
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(ServeProcess, env, _free_port(), tmp_path) for _ in range(n)]
    started, failure = [], None
    for future in futures:
        try:
            started.append(future.result())
        except BaseException as exc:  # pytest.fail raises an outcome exception
            failure = exc
    if failure is not None:
        for process in started:
            process.stop()
        raise failure
    return started


# ---- observing ------------------------------------------------------------------------------


def _key(params_or_message: dict) -> str | None:
    meta = params_or_message.get("metadata") or {}
    if isinstance(meta, str):  # form-encoded calls carry it as JSON text
        meta = json.loads(meta)
    return (meta.get("event_payload") or {}).get("key")


def _post_calls(fake) -> Counter:
    """``chat.postMessage`` calls received, by outbox key (failed attempts included)."""
    return Counter(_key(params) for params in fake.calls_to("chat.postMessage"))


def _in_channels(fake, channels) -> Counter:
    """Messages standing in the channels, by outbox key (a digest's chart, shared in its
    thread, is not a message of its own: see `_charts`)."""
    return Counter(
        _key(message)
        for channel in channels
        for message in fake.messages(channel).values()
        if message.get("subtype") != "file_share"
    )


def _charts(fake) -> Counter:
    """Digest charts shared, by the ts of the message whose thread holds them."""
    return Counter(u.thread_ts for u in fake.uploads if u.completed)


def _rows(db, model, *where):
    with db.session() as session:
        return list(session.exec(select(model).where(*where)))


def _outbox(db, key: str) -> OutboxMessage | None:
    rows = _rows(db, OutboxMessage, OutboxMessage.key == key)
    return rows[0] if rows else None


def _status(db, key: str) -> str | None:
    row = _outbox(db, key)
    return row.status if row else None


def _sent(db, keys) -> bool:
    rows = {row.key: row for row in _rows(db, OutboxMessage)}
    return all(key in rows and rows[key].status == "sent" for key in keys)


def _rewind_lease(db, model, *where) -> int:
    """End a dead worker's lease now (see the tests for why)."""
    past = now() - timedelta(seconds=1)
    with db.session() as session:
        result = session.exec(
            update(model)
            .where(*where, model.lease_owner.is_not(None))
            .values(lease_until=past)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount


def _log(process: ServeProcess) -> str:
    with open(process.log.name) as log:
        return log.read()


def _assert_clean_logs(*processes: ServeProcess) -> None:
    """No traceback logged while running. Checked before a graceful stop: what a stop logs
    is the subject of its own test (``test_a_graceful_stop_...``)."""
    for process in processes:
        text = _log(process)
        assert "Traceback" not in text, f"{process.log.name}:\n{text[-4000:]}"


# ---- 1. three replicas ----------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_three_replicas_post_each_alert_and_digest_exactly_once(sandbox, fake_slack, db, tmp_path):
    """Three replicas on one PostgreSQL schema, every job ticking each second: 6 links
    (3 orgs x 2 channels), each crossing 50/80/100% and with a digest due. Each alert and
    each digest reaches Slack once; schedules advance once; no replica logs a traceback
    while running."""
    sandbox.state.latency_seconds = 0.1  # Atlas calls overlap across replicas
    # Every job ticks each second on three replicas (in production the thresholds job runs
    # every five minutes): that spends an Atlas bucket of 100 in seconds, and this test is
    # about exactly-once posting, not rate limits (tests/atlas covers those).
    sandbox.state.rate_limit = sandbox.state.rate_refill = 100_000
    env = _serve_env(
        sandbox,
        fake_slack,
        db,
        BOT_POLL_SECONDS=1,
        BOT_THRESHOLD_SECONDS=1,
        BOT_DIGEST_SECONDS=1,
    )
    replicas = _start(env, tmp_path, 3)
    try:
        # Seeded only now that all three are ticking: they all find the work at once.
        seeded = _seed(db, sandbox, sandbox.data.org_ids[:3], (CHANNEL, OTHER_CHANNEL))
        expected = seeded.alert_keys | seeded.digest_keys
        assert len(expected) == 12
        _wait(  # generous: six serve-sized processes share the machine's cores with pytest
            lambda: expected <= set(_post_calls(fake_slack)) and _sent(db, expected),
            120,
            "every alert and digest to be posted and recorded",
        )
        posted_at_done = _post_calls(fake_slack)
        for replica in replicas:  # four more ticks of every job on each replica: nothing posted
            replica.ticks(4, *JOBS)
        assert _post_calls(fake_slack) == posted_at_done
        _assert_clean_logs(*replicas)
    finally:
        for replica in replicas:
            replica.stop()

    posts = _post_calls(fake_slack)
    assert set(posts) == expected, "only the expected keys were posted"
    assert {key: n for key, n in posts.items() if n != 1} == {}, "posted more than once"
    assert _in_channels(fake_slack, (CHANNEL, OTHER_CHANNEL)) == Counter(dict.fromkeys(expected, 1))
    # Each digest's chart once, in that digest's thread.
    digest_ts = {_outbox(db, key).message_ts for key in seeded.digest_keys}
    assert _charts(fake_slack) == Counter(dict.fromkeys(digest_ts, 1))
    for params in fake_slack.calls_to("chat.postMessage"):
        if _key(params).startswith("alert:"):
            assert params["text"] and f"<@{ONCALL}>" in json.dumps(params["blocks"])
        else:  # the chart is shared in the digest's thread (`_charts` above), not inlined
            assert not any(block["type"] == "image" for block in params["blocks"])

    outbox = _rows(db, OutboxMessage)
    assert sorted(row.key for row in outbox) == sorted(expected)
    assert {row.status for row in outbox} == {"sent"}
    assert all(row.message_ts for row in outbox)
    assert len(_rows(db, Alert)) == 3 * len(seeded.link_ids)  # 50, 80, 100 per link, once

    digest_queries = _rows(db, CostQuery, CostQuery.purpose == "digest")
    assert sorted(q.digest_key for q in digest_queries) == sorted(seeded.digest_keys)
    assert {q.status for q in digest_queries} == {"done"}
    following = next_run(*SCHEDULE, after=now())
    stored = _rows(db, DigestSchedule)
    assert len(stored) == len(seeded.link_ids)
    assert {s.next_run_at for s in stored} == {following}, "each schedule advanced exactly once"
    # One chart uploaded per digest, each recorded on its message: no replica uploaded in vain.
    used = {row.file_id for row in outbox if row.key in seeded.digest_keys}
    assert used == {upload.file_id for upload in fake_slack.uploads if upload.completed}
    assert len(used) == len(seeded.digest_keys)
    # All three really worked on the same rows: each read the invoices with its own token.
    readers = {
        r.headers.get("authorization") for r in sandbox.state.requests_for("listInvoicePending")
    }
    assert len(readers) == 3
    assert fake_slack.errors == []


# ---- 2. kill -9 while an alert is being posted ----------------------------------------------


def test_a_replica_killed_while_posting_an_alert_does_not_post_it_twice(
    sandbox, fake_slack, db, tmp_path
):
    """SIGKILL after Slack received the alert but before the bot recorded it as sent: the
    next process finds it in the channel history (by its metadata key) and records it
    instead of posting it again."""
    [org_id] = sandbox.data.org_ids[:1]
    seeded = _seed(db, sandbox, [org_id], (CHANNEL,), digest=False)
    [key] = seeded.alert_keys
    env = _serve_env(sandbox, fake_slack, db, BOT_POLL_SECONDS=0.5, BOT_THRESHOLD_SECONDS=0.5)
    # Slack carries out the post at once but answers only after 5 s: the kill lands in between.
    fake_slack.delay("chat.postMessage", 5, times=1)

    first = ServeProcess(env, _free_port(), tmp_path)
    try:
        fake_slack.wait_for(lambda: fake_slack.calls_to("chat.postMessage"), timeout=30)
    finally:
        first.kill()
    row = _outbox(db, key)
    assert row is not None and row.status == "pending" and row.attempts == 1
    assert row.lease_owner is not None  # the dead worker still holds the lease
    assert _in_channels(fake_slack, (CHANNEL,))[key] == 1  # ... but Slack has the message

    second = ServeProcess(env, _free_port(), tmp_path)
    try:
        # Four outbox ticks: the dead worker's lease (bot.slack.outbox.LEASE_SECONDS = 120 s) keeps
        # the message from everyone, so a crashed replica delays its alerts by two minutes.
        second.ticks(4, "outbox")
        assert _outbox(db, key).status == "pending" and _outbox(db, key).attempts == 1
        assert len(fake_slack.calls_to("conversations.history")) == 0
        # Waiting those two minutes out would make this test slow; ending the lease now is
        # what its running out does, and is the path under test.
        assert _rewind_lease(db, OutboxMessage, OutboxMessage.key == key) == 1
        _wait(lambda: _status(db, key) == "sent", 30, "the alert to be recorded as sent")
        second.ticks(2, "outbox")  # two more outbox ticks: nothing else happens
        _assert_clean_logs(first, second)
    finally:
        second.stop()

    assert _post_calls(fake_slack) == Counter({key: 1}), "posted again after the crash"
    [(ts, message)] = fake_slack.messages(CHANNEL).items()
    row = _outbox(db, key)
    assert (row.status, row.message_ts, row.attempts) == ("sent", ts, 2)
    assert _key(message) == key
    assert fake_slack.calls_to("conversations.history")  # found there, by its metadata


# ---- 3. kill -9 while a digest is being prepared --------------------------------------------


def test_a_replica_killed_while_a_digest_is_pending_posts_it_once_after_restart(
    sandbox, fake_slack, db, tmp_path
):
    """SIGKILL after the digest's Cost Explorer query was started and stored, while Atlas
    still answers 102: the restarted process polls the same query and posts the digest
    once; the schedule is not run again."""
    [org_id] = sandbox.data.org_ids[:1]
    seeded = _seed(db, sandbox, [org_id], (CHANNEL,), threshold=False)
    [key] = seeded.digest_keys
    [link_id] = seeded.link_ids
    sandbox.state.cost_polls_before_ready = 3
    env = _serve_env(sandbox, fake_slack, db, BOT_POLL_SECONDS=0.5, BOT_DIGEST_SECONDS=0.5)

    first = ServeProcess(env, _free_port(), tmp_path)
    try:
        _wait(
            lambda: _rows(db, CostQuery, CostQuery.digest_key == key),
            30,
            "the digest's Cost Explorer query to be stored",
        )
    finally:
        first.kill()
    assert fake_slack.calls_to("chat.postMessage") == []  # killed before the digest went out
    assert _outbox(db, key) is None
    [schedule] = _rows(db, DigestSchedule)
    advanced_to = schedule.next_run_at
    assert advanced_to > now()
    creates = sandbox.state.requests_for("createCostExplorerProcess")
    assert len(creates) == 1
    # Had the kill landed during a poll, the dead worker's poll lease (30 s) would hold the
    # query back; end it, as its running out would.
    _rewind_lease(db, CostQuery, CostQuery.digest_key == key)

    second = ServeProcess(env, _free_port(), tmp_path)
    try:
        _wait(lambda: _status(db, key) == "sent", 60, "the digest")
        second.ticks(3, "poll", "digests", "outbox")  # three more ticks: nothing else happens
        _assert_clean_logs(first, second)
    finally:
        second.stop()

    assert _post_calls(fake_slack) == Counter({key: 1})
    [query] = _rows(db, CostQuery, CostQuery.link_id == link_id)  # no second query
    assert (query.digest_key, query.status) == (key, "done")
    assert len(sandbox.state.requests_for("createCostExplorerProcess")) == 1
    [schedule] = _rows(db, DigestSchedule)
    assert schedule.next_run_at == advanced_to == next_run(*SCHEDULE, after=now())


# ---- 4. Slack rate-limits the alert ---------------------------------------------------------


def test_a_slack_429_on_the_alert_is_retried_after_retry_after_and_posted_once(
    sandbox, fake_slack, db, tmp_path
):
    """One 429 with Retry-After: 1 on the alert's post: slack_sdk's handler waits it out and
    posts again; the alert is in the channel once and recorded as sent."""
    [org_id] = sandbox.data.org_ids[:1]
    seeded = _seed(db, sandbox, [org_id], (CHANNEL,), digest=False)
    [key] = seeded.alert_keys
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=1)
    env = _serve_env(sandbox, fake_slack, db, BOT_POLL_SECONDS=0.5, BOT_THRESHOLD_SECONDS=0.5)
    server = ServeProcess(env, _free_port(), tmp_path)
    try:
        fake_slack.wait_for(lambda: fake_slack.calls_to("chat.postMessage"), timeout=30)
        refused_at = time.monotonic()
        fake_slack.wait_for(lambda: fake_slack.messages(CHANNEL), timeout=30)
        waited = time.monotonic() - refused_at
        _wait(lambda: _status(db, key) == "sent", 30, "the alert to be recorded as sent")
        server.ticks(2, "outbox")  # two more outbox ticks: nothing else happens
        _assert_clean_logs(server)
    finally:
        server.stop()

    assert waited >= 0.9, f"retried {waited:.2f}s after a Retry-After of 1s"
    assert _post_calls(fake_slack) == Counter({key: 2})  # the 429, then the retry
    assert _in_channels(fake_slack, (CHANNEL,)) == Counter({key: 1})
    assert _outbox(db, key).status == "sent"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the engine plays no part
def test_a_rate_limit_outlasting_the_sdk_retries_is_retried_by_the_outbox(
    sandbox, fake_slack, db, tmp_path
):
    """Four 429s: slack_sdk's handler (three retries) gives up, the outbox takes the message
    back until Retry-After, then posts it once. A 429 is an answer: the message surely did not
    go out, so the retry needs no look in the history."""
    [org_id] = sandbox.data.org_ids[:1]
    seeded = _seed(db, sandbox, [org_id], (CHANNEL,), digest=False)
    [key] = seeded.alert_keys
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=1, times=4)
    env = _serve_env(sandbox, fake_slack, db, BOT_POLL_SECONDS=0.5, BOT_THRESHOLD_SECONDS=0.5)
    server = ServeProcess(env, _free_port(), tmp_path)
    try:
        _wait(lambda: _status(db, key) == "sent", 40, "the alert to be recorded as sent")
        server.ticks(2, "outbox")  # two more outbox ticks: nothing else happens
        _assert_clean_logs(server)
    finally:
        server.stop()

    assert _post_calls(fake_slack) == Counter({key: 5})  # four 429s, then the post
    assert _in_channels(fake_slack, (CHANNEL,)) == Counter({key: 1})
    row = _outbox(db, key)
    assert (row.attempts, row.last_error) == (2, "slack: 429 ratelimited")
    assert fake_slack.calls_to("conversations.history") == []


# ---- 5. a graceful stop while a job is at work ----------------------------------------------


def test_a_graceful_stop_while_an_alert_is_being_posted_logs_no_traceback_and_keeps_no_lease(
    sandbox, fake_slack, db, tmp_path
):
    """SIGINT (a deploy, ``docker stop``) while the outbox waits for Slack's answer.

    A graceful stop should let the job finish (or at least hand the message back) and
    log no error. Today bot/runtime/server.py's lifespan calls ``scheduler.shutdown(wait=False)``
    and closes the clients while jobs still run; when uvicorn returns, ``asyncio.run``
    cancels the job task, APScheduler logs the CancelledError as "Job ... raised an
    exception" with a traceback, and the message stays leased to the stopped worker for
    bot.slack.outbox.LEASE_SECONDS (120 s) although it was posted.
    """
    [org_id] = sandbox.data.org_ids[:1]
    seeded = _seed(db, sandbox, [org_id], (CHANNEL,), digest=False)
    [key] = seeded.alert_keys
    env = _serve_env(sandbox, fake_slack, db, BOT_POLL_SECONDS=0.5, BOT_THRESHOLD_SECONDS=0.5)
    fake_slack.delay("chat.postMessage", 2, times=1)  # Slack answers after 2 s
    server = ServeProcess(env, _free_port(), tmp_path)
    try:
        fake_slack.wait_for(lambda: fake_slack.calls_to("chat.postMessage"), timeout=30)
    finally:
        server.stop()  # SIGINT, then up to 15 s to exit
    log = _log(server)
    row = _outbox(db, key)
    assert _post_calls(fake_slack) == Counter({key: 1})
    problems = []
    if "Traceback" in log:
        start = log.index("Traceback")
        problems.append("traceback logged at stop:\n" + log[max(start - 200, 0) : start + 600])
    # Finished and recorded, or handed back for the next replica (which checks the history).
    if not (row.status == "sent" or (row.status == "pending" and row.lease_owner is None)):
        problems.append(
            f"outbox row {row.status!r}, still leased to {row.lease_owner} until "
            f"{row.lease_until:%H:%M:%S} (stopped at {now():%H:%M:%S})"
        )
    assert not problems, "\n\n".join(problems)
