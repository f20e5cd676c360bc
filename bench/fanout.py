"""Fan-out of the digests and thresholds jobs over many orgs, against the sandbox Atlas.

    .venv/bin/python bench/fanout.py                 # 500 orgs (a few minutes)
    .venv/bin/python bench/fanout.py --orgs 100 --chains 5 --skip-thresholds   # a quick look

The sandbox Atlas runs in its own process (so that its CPU does not share the bot's GIL)
with ``--orgs`` extra small orgs, ``latency_seconds`` = 0.1 on every request and two ``102``
answers before each Cost Explorer result (``cost_polls_before_ready`` = 2). The bot is driven
in this process through its own job functions, on a migrated temporary database (SQLite; and
PostgreSQL too when ``TEST_POSTGRES_URL`` is set), with ``BOT_POLL_SECONDS`` = 0.1 and the real
wall clock (backoffs are real waits). The four base orgs of the sandbox (one of them huge) are
not linked; only the extra ones are.

**One digests run**: ``--orgs`` links, each with a digest schedule that is due. The clock starts
when the *digests* job's tick calls ``digests.start_due`` (the wait for that tick, at most
``BOT_DIGEST_SECONDS``, is not counted) and stops when the last digest has been committed *into
the outbox* (rendered and queued; posting to Slack is the outbox job's, which is not run). The
*poll* job runs meanwhile exactly as in production: ``bot.runtime.jobs.build_scheduler``'s interval job
(APScheduler, every ``BOT_POLL_SECONDS``, ``max_instances=1``, ``coalesce``), the other jobs
removed. Each run is measured twice: with the digest chart as shipped (matplotlib, CPU work in a
thread) and with the chart replaced by a PNG rendered beforehand (everything else unchanged).

**Lower bound**: the slowest single org's chain, measured in the same run by the same code for
one org at a time (create the query, two 102 polls, the result poll, the month-to-date pending
invoice read, chart, outbox): the max over ``--chains`` orgs, after an untimed warm-up chain
(OAuth token, connections, matplotlib's first figure).
**Sequential loop**: those ``--chains`` chains one after another, extrapolated to ``--orgs``.

Target (the issue's): one digests run ≤ 1.5x the bound, without any 429 from the sandbox. It is
judged on the run without the chart: 500 charts are CPU work that no fan-out can hide (their
total CPU time alone is many times a single chain); the run as shipped is reported beside it.
Every run also prints where each org's time went (waits and requests, from wrappers around the
bot's Atlas client, ``digests.complete``, the chart and the poll job: no bot code is changed),
and its CPU floors: the bot's own CPU time in the run (one process, one GIL: at that CPU cost
the run cannot be shorter) and bot + sandbox CPU over the machine's cores.

**Rate limit**: from the sandbox's request log (all phases): no request answered 429, and the
most requests any org received within any window of ``rate_window_seconds`` (sliding, which is
stricter than the sandbox's fixed windows).

**Thresholds run**: ``--orgs`` × ``--channels`` links, each with a $1.00 threshold (so every
link crosses: the first run queues one alert per link); ``alerts.check_thresholds`` twice (the
first run, then a steady-state run with nothing new); target: at most one ``listInvoicePending``
per org per run, counted in the sandbox's log.

It prints PASS/FAIL per target and exits 0 either way: CI does not run it, people do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlmodel import col, select  # noqa: E402

import bot.runtime.jobs  # noqa: E402
import bot.services.digests  # noqa: E402
import storage.digests  # noqa: E402
from bot.atlas import NotReady  # noqa: E402
from bot.core.config import Settings  # noqa: E402
from bot.deps import Deps  # noqa: E402
from bot.render.digests import DigestSummary  # noqa: E402
from bot.runtime.app import build_deps  # noqa: E402
from bot.services import alerts, digests  # noqa: E402
from storage import Database, links, thresholds  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.models import CostQuery, DigestSchedule, OutboxMessage  # noqa: E402
from tests.fakes.slack import FakeSlack  # noqa: E402

TEAM = "T1"
ADMIN = "U_ADMIN"
POLL_SECONDS = 0.1
TARGET_RATIO = 1.5
RUN_TIMEOUT_SECONDS = 600.0
STARTUP_TIMEOUT_SECONDS = 120.0
THRESHOLD_CENTS = 100  # $1.00: every org's month-to-date spend is above it
LIST_PENDING = "listInvoicePending"
CREATE = "createCostExplorerProcess"
POLL = "getCostExplorerUsage"
# bot.services.digests imports this from bot.render.chart (it does not export it) and calls
# it by that name: the bench wraps it there, so it is read and set by name.
CHART_FUNCTION = "digest_chart_png"


# ---- the sandbox Atlas (its own process) ---------------------------------------------------------


def serve_sandbox(conn: Any, orgs: int, latency: float, polls_before_ready: int) -> None:
    """The sandbox with ``orgs`` extra orgs; answers the bench's questions over ``conn``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bot.sandbox import SandboxServer

    with SandboxServer(seed=1, extra_orgs=orgs) as sandbox:
        state = sandbox.state
        # Build every org's data now, not on its first request in a timed run.
        for org in sandbox.data.orgs():
            if not org.huge:
                list(org.pending.line_items())
        state.set_switches(latency_seconds=latency, cost_polls_before_ready=polls_before_ready)
        stamped: list[tuple[float, str | None, str | None, int | None]] = []
        log_entry = state._log

        def log(entry: Any) -> None:
            # The sandbox's log has no times; the rate-limit check needs them.
            log_entry(entry)
            stamped.append((time.monotonic(), entry.org_id, entry.operation, entry.status))

        state._log = log  # type: ignore[method-assign]
        creds = sandbox.data.credentials
        conn.send(
            {
                "url": sandbox.base_url,
                "client_id": creds.client_id,
                "client_secret": creds.client_secret,
                "base_orgs": list(sandbox.data.org_ids[:4]),
                "extra_orgs": list(sandbox.data.org_ids[4:]),
                "rate_limit": state.rate_limit,
                "rate_window_seconds": state.rate_window_seconds,
            }
        )
        while True:
            request = conn.recv()
            if request == "stop":
                return
            if request == "log":
                conn.send(list(stamped))


class Sandbox:
    """The bench's handle on the sandbox process."""

    def __init__(self, orgs: int, latency: float, polls_before_ready: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=serve_sandbox,
            args=(child, orgs, latency, polls_before_ready),
            name="sandbox",
            daemon=True,
        )
        self.process.start()
        if not self._conn.poll(STARTUP_TIMEOUT_SECONDS):
            self.stop()
            raise RuntimeError("the sandbox Atlas did not start")
        self.info: dict[str, Any] = self._conn.recv()

    def log(self) -> list[tuple[float, str | None, str | None, int | None]]:
        """(monotonic time, org, operation, status) of every request so far."""
        self._conn.send("log")
        entries: list[tuple[float, str | None, str | None, int | None]] = self._conn.recv()
        return entries

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time process ``pid`` has used so far (Linux; NaN elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- instrumentation (wrappers around the bot's functions; no bot code changes) ------------------


@dataclass
class Trace:
    """What one run did, in ``time.perf_counter`` seconds."""

    requests: list[tuple[str, str, float, float, str]] = field(default_factory=list)
    charts: list[tuple[float, float]] = field(default_factory=list)  # wall, thread CPU
    completed: dict[str, float] = field(default_factory=dict)  # org -> in the outbox
    ticks: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, claimed
    expected: int = 0
    done: asyncio.Event | None = None


class Instruments:
    """Times every Atlas call, chart, completed digest and poll tick; swaps the chart out."""

    def __init__(self) -> None:
        self.trace = Trace()
        self.real_chart = True
        self.stub_png: bytes | None = None
        self.ticks_running = 0

    def install(self, atlas: Any) -> None:
        for name in ("create_cost_query", "cost_result", "pending_invoices"):
            setattr(atlas, name, self._timed_call(getattr(atlas, name), name))
        chart: Callable[[DigestSummary], bytes] = getattr(bot.services.digests, CHART_FUNCTION)

        def timed_chart(summary: Any) -> bytes:
            if not self.real_chart and self.stub_png is not None:
                return self.stub_png
            wall, cpu = time.perf_counter(), time.thread_time()
            png = chart(summary)
            self.trace.charts.append((time.perf_counter() - wall, time.thread_time() - cpu))
            self.stub_png = png
            return png

        setattr(bot.services.digests, CHART_FUNCTION, timed_chart)
        complete = bot.services.digests.complete

        async def timed_complete(deps: Deps, row: Any, result: Any) -> bool:
            won = await complete(deps, row, result)
            trace = self.trace
            trace.completed[row.org_id] = time.perf_counter()
            if trace.done is not None and len(trace.completed) >= trace.expected:
                trace.done.set()
            return won

        bot.services.digests.complete = timed_complete
        poll = bot.runtime.jobs.JOBS["poll"]

        async def timed_poll(deps: Deps) -> Any:
            started = time.perf_counter()
            self.ticks_running += 1
            try:
                report = await poll(deps)
            finally:
                self.ticks_running -= 1
            self.trace.ticks.append((started, time.perf_counter(), report.claimed))
            return report

        bot.runtime.jobs.JOBS["poll"] = timed_poll

    def _timed_call(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        async def timed(org_id: str, *args: Any, **kwargs: Any) -> Any:
            started, outcome = time.perf_counter(), "error"
            try:
                result = await method(org_id, *args, **kwargs)
                outcome = "102" if isinstance(result, NotReady) else "ok"
                return result
            finally:
                self.trace.requests.append((org_id, name, started, time.perf_counter(), outcome))

        return timed

    def reset(self, expected: int) -> Trace:
        self.trace = Trace(expected=expected, done=asyncio.Event())
        return self.trace


class LoopLag:
    """How late a 10 ms sleep wakes up: a busy event loop (or GIL) shows here."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            self.lags.append(time.perf_counter() - started - 0.01)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# ---- databases -----------------------------------------------------------------------------------


class Databases:
    """Fresh migrated databases, each removed at the end: SQLite files or PostgreSQL schemas."""

    def __init__(self, tmp: Path, postgres_url: str | None = None) -> None:
        self._tmp = tmp
        self._pg = postgres_url
        self._made: list[tuple[Database, str | None]] = []

    def new(self) -> Database:
        if self._pg is None:
            url = f"sqlite:///{self._tmp / f'bot-{len(self._made)}.db'}"
            schema = None
        else:
            schema = f"bench_fanout_{uuid.uuid4().hex[:16]}"
            admin = make_engine(self._pg)
            with admin.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            admin.dispose()
            url = (
                make_url(self._pg)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        db = Database(url)
        self._made.append((db, schema))
        db.upgrade()
        return db

    def close(self) -> None:
        for db, _ in self._made:
            db.dispose()
        schemas = [s for _, s in self._made if s]
        if schemas and self._pg:
            admin = make_engine(self._pg)
            with admin.begin() as conn:
                for schema in schemas:
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.dispose()
        self._made.clear()


def add_digest_links(db: Database, org_ids: list[str], next_run_at: datetime) -> list[int]:
    """One channel per org, each with a digest schedule; returns the link IDs."""
    ids = []
    with db.session() as session:
        for n, org_id in enumerate(org_ids):
            link, _ = links.add_link(
                session, team_id=TEAM, channel_id=f"CD{n:05d}", org_id=org_id, created_by=ADMIN
            )
            assert link.id is not None
            storage.digests.set_schedule(
                session,
                link_id=link.id,
                day="1",
                hour=9,
                minute=0,
                next_run_at=next_run_at,
                updated_by=ADMIN,
            )
            ids.append(link.id)
    return ids


def make_due(db: Database, link_ids: list[int]) -> None:
    with db.session() as session:
        session.exec(
            update(DigestSchedule)
            .where(col(DigestSchedule.link_id).in_(link_ids))
            .values(next_run_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def add_threshold_links(db: Database, org_ids: list[str], channels: int) -> int:
    count = 0
    with db.session() as session:
        for channel in range(channels):
            for org_id in org_ids:
                link, _ = links.add_link(
                    session,
                    team_id=TEAM,
                    channel_id=f"CT{channel:04d}",
                    org_id=org_id,
                    created_by=ADMIN,
                )
                assert link.id is not None
                thresholds.set_threshold(
                    session, link_id=link.id, amount_cents=THRESHOLD_CENTS, updated_by=ADMIN
                )
                count += 1
    return count


def digest_state(db: Database) -> tuple[int, Counter[str]]:
    """Digests in the outbox, and the cost queries by status."""
    with db.session() as session:
        queued = session.exec(
            select(func.count())
            .select_from(OutboxMessage)
            .where(col(OutboxMessage.key).like("digest:%"))
        ).one()
        statuses = Counter(session.exec(select(CostQuery.status)).all())
    return queued, statuses


# ---- one digests run -----------------------------------------------------------------------------


@dataclass
class Run:
    orgs: int
    chart: bool
    seconds: float
    start_due_seconds: float
    trace: Trace
    queued: int
    statuses: Counter[str]
    bot_cpu: float
    sandbox_cpu: float
    lags: list[float]
    t0: float

    @property
    def complete(self) -> bool:
        return self.queued == self.orgs and len(self.trace.completed) == self.orgs


async def digest_run(
    deps: Deps, db: Database, link_ids: list[int], instruments: Instruments, sandbox: Sandbox
) -> Run:
    """Make the schedules due, run the digests tick and the poll job until all are queued."""
    deps = dataclasses.replace(deps, db=db)
    make_due(db, link_ids)
    trace = instruments.reset(len(link_ids))
    assert trace.done is not None
    scheduler = bot.runtime.jobs.build_scheduler(deps)
    for job in scheduler.get_jobs():
        if job.id != "poll":
            scheduler.remove_job(job.id)
    cpu, sandbox_cpu = time.process_time(), sandbox.cpu_seconds()
    with LoopLag() as lag:
        t0 = time.perf_counter()
        scheduler.start()
        report = await digests.start_due(deps)
        start_due_seconds = time.perf_counter() - t0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(trace.done.wait(), RUN_TIMEOUT_SECONDS)
        seconds = time.perf_counter() - t0
        scheduler.shutdown(wait=False)
    bot_cpu, sandbox_cpu = time.process_time() - cpu, sandbox.cpu_seconds() - sandbox_cpu
    # Let a poll tick still under way finish before the database is looked at or dropped.
    for _ in range(200):
        if not instruments.ticks_running:
            break
        await asyncio.sleep(0.05)
    if report.started != len(link_ids):
        print(f"  ! start_due: {report}")
    queued, statuses = await asyncio.to_thread(digest_state, db)
    return Run(
        orgs=len(link_ids),
        chart=instruments.real_chart,
        seconds=seconds,
        start_due_seconds=start_due_seconds,
        trace=trace,
        queued=queued,
        statuses=statuses,
        bot_cpu=bot_cpu,
        sandbox_cpu=sandbox_cpu,
        lags=lag.lags,
        t0=t0,
    )


async def chains(
    deps: Deps,
    db: Database,
    link_ids: list[int],
    instruments: Instruments,
    sandbox: Sandbox,
) -> dict[bool, list[Run]]:
    """Each org's chain alone, chart and no chart alternating (so load hits both alike)."""
    runs: dict[bool, list[Run]] = {True: [], False: []}
    for n, link_id in enumerate(link_ids):
        for chart in (n % 2 == 0, n % 2 != 0):
            instruments.real_chart = chart
            run = await digest_run(deps, db, [link_id], instruments, sandbox)
            runs[chart].append(run)
            # The next chain of the same org must start a fresh month's digest: drop the keys.
            await asyncio.to_thread(forget_digests, db)
    return runs


def forget_digests(db: Database) -> None:
    from sqlalchemy import delete

    with db.session() as session:
        session.exec(delete(OutboxMessage))
        session.exec(delete(CostQuery))


# ---- analysis ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.0f} ms"


def segments(run: Run) -> dict[str, list[float]]:
    """Per org, where its chain's time went, in order."""
    by_org: dict[str, list[tuple[str, float, float, str]]] = defaultdict(list)
    for org, name, start, end, outcome in run.trace.requests:
        by_org[org].append((name, start, end, outcome))
    parts: dict[str, list[float]] = defaultdict(list)
    for org, calls in by_org.items():
        calls.sort(key=lambda c: c[1])
        creates = [c for c in calls if c[0] == "create_cost_query"]
        polls = [c for c in calls if c[0] == "cost_result"]
        pending = [c for c in calls if c[0] == "pending_invoices"]
        if not (creates and polls and pending and org in run.trace.completed):
            continue
        parts["waiting to start (digests tick, CONCURRENT)"].append(creates[0][1] - run.t0)
        parts["create query (request)"].append(creates[-1][2] - creates[-1][1])
        parts["stored → first poll (claim, tick)"].append(polls[0][1] - creates[-1][2])
        for n, (previous, current) in enumerate(itertools.pairwise(polls), 1):
            parts[f"poll {n} end → poll {n + 1} (backoff, tick)"].append(current[1] - previous[2])
        for n, poll in enumerate(polls, 1):
            parts[f"poll {n} ({poll[3]}) (request)"].append(poll[2] - poll[1])
        parts["result → pending read"].append(pending[0][1] - polls[-1][2])
        parts["pending invoice (request)"].append(pending[-1][2] - pending[-1][1])
        parts["chart + outbox write"].append(run.trace.completed[org] - pending[-1][2])
        parts["total chain"].append(run.trace.completed[org] - run.t0)
    return parts


def print_segments(run: Run) -> None:
    print(f"    where each org's time went ({run.orgs} orgs; mean / p90 / max):")
    for name, values in segments(run).items():
        print(
            f"      {name:<46} {ms(statistics.fmean(values))} {ms(pct(values, 0.9))} "
            f"{ms(max(values))}"
        )


def print_run(label: str, run: Run) -> None:
    trace = run.trace
    finished = sorted(t - run.t0 for t in trace.completed.values())
    ticks = trace.ticks
    calls = Counter((name, outcome) for _, name, _, _, outcome in trace.requests)
    durations = [end - start for _, _, start, end, _ in trace.requests]
    print(f"  {label}: {run.seconds:.2f} s for {run.orgs} orgs")
    print(
        f"    in the outbox: {run.queued}/{run.orgs}; queries {dict(run.statuses)}; "
        f"half done at {pct(finished, 0.5):.2f} s, 90% at {pct(finished, 0.9):.2f} s"
    )
    print(
        f"    digests tick (start_due): {run.start_due_seconds:.2f} s; poll ticks: {len(ticks)} "
        f"(claimed mean {statistics.fmean(c for *_, c in ticks) if ticks else 0:.1f}, "
        f"max {max((c for *_, c in ticks), default=0)}), tick duration mean "
        f"{statistics.fmean(e - s for s, e, _ in ticks) if ticks else 0:.2f} s, max "
        f"{max((e - s for s, e, _ in ticks), default=0):.2f} s"
    )
    spans = [(start, end) for _, _, start, end, _ in trace.requests]
    per_org = Counter(org for org, *_ in trace.requests)
    print(
        f"    Atlas requests in flight: max {concurrency(spans)}, mean "
        f"{sum(durations) / run.seconds:.1f}; per org: max {max(per_org.values(), default=0)}"
    )
    print(
        "    Atlas calls: "
        + ", ".join(f"{name} {outcome}: {n}" for (name, outcome), n in sorted(calls.items()))
        + f"; seen by the bot p50 {ms(pct(durations, 0.5)).strip()}, p99 "
        f"{ms(pct(durations, 0.99)).strip()}, max {ms(max(durations, default=0)).strip()}"
    )
    if trace.charts:
        walls, cpus = [w for w, _ in trace.charts], [c for _, c in trace.charts]
        print(
            f"    charts: {len(cpus)}, CPU {statistics.fmean(cpus) * 1000:.0f} ms each "
            f"(total {sum(cpus):.1f} s), wall {statistics.fmean(walls) * 1000:.0f} ms each"
        )
    print(
        f"    CPU: bot {run.bot_cpu:.1f} s ({run.bot_cpu / run.seconds:.0%} of one core), "
        f"sandbox {run.sandbox_cpu:.1f} s; event-loop lag p99 {ms(pct(run.lags, 0.99)).strip()}, "
        f"max {ms(max(run.lags, default=0)).strip()}"
    )


def concurrency(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = level = 0
    for _, step in edges:
        level += step
        best = max(best, level)
    return best


def max_per_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = first = 0
    for last, moment in enumerate(times):
        while times[first] <= moment - window:
            first += 1
        best = max(best, last - first + 1)
    return best


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---- thresholds ----------------------------------------------------------------------------------


async def threshold_runs(
    deps: Deps, db: Database, sandbox: Sandbox, instruments: Instruments
) -> list[dict[str, Any]]:
    """Two runs of the thresholds job, each with its requests counted in the sandbox's log."""
    deps = dataclasses.replace(deps, db=db)
    results = []
    for label in ("first run (every link crosses)", "second run (nothing new)"):
        before = len(sandbox.log())
        trace = instruments.reset(0)
        cpu, sandbox_cpu = time.process_time(), sandbox.cpu_seconds()
        started = time.perf_counter()
        report = await alerts.check_thresholds(deps)
        seconds = time.perf_counter() - started
        entries = sandbox.log()[before:]
        pending = [org for _, org, op, _ in entries if op == LIST_PENDING]
        # The job reads every org first, then records link by link: split the time there.
        fetched = max((end for *_, end, _ in trace.requests), default=started) - started
        results.append(
            {
                "label": label,
                "seconds": seconds,
                "fetch_seconds": fetched,
                "report": report,
                "pending": len(pending),
                "per_org": max(Counter(pending).values(), default=0),
                "limited": sum(1 for *_, status in entries if status == 429),
                "bot_cpu": time.process_time() - cpu,
                "sandbox_cpu": sandbox.cpu_seconds() - sandbox_cpu,
            }
        )
    return results


# ---- main ----------------------------------------------------------------------------------------


@dataclass
class Figures:
    bound: dict[bool, float]
    sequential: dict[bool, float]
    runs: dict[tuple[str, bool], Run]


async def bench_digests(
    sandbox: Sandbox,
    databases: Databases,
    engine: str,
    orgs: list[str],
    chain_orgs: int,
    deps: Deps,
    instruments: Instruments,
) -> Figures:
    """Chains (bound, sequential) then one run of all orgs, without and with the chart."""
    future = datetime.now(UTC) + timedelta(days=365)
    # Warm up: OAuth token, connection pool, matplotlib's first figure, SQL compilation.
    warm_db = await asyncio.to_thread(databases.new)
    warm_ids = await asyncio.to_thread(
        add_digest_links, warm_db, sandbox.info["base_orgs"][:1], future
    )
    instruments.real_chart = True
    await digest_run(deps, warm_db, warm_ids, instruments, sandbox)

    chain_db = await asyncio.to_thread(databases.new)
    chain_ids = await asyncio.to_thread(add_digest_links, chain_db, orgs[:chain_orgs], future)
    print(
        f"\n[{engine}] {chain_orgs} single-org chains, one after another (chart / no chart alternating):"
    )
    chain_runs = await chains(deps, chain_db, chain_ids, instruments, sandbox)
    bound, sequential = {}, {}
    for chart in (False, True):
        times = [r.seconds for r in chain_runs[chart]]
        bad = sum(not r.complete for r in chain_runs[chart])
        bound[chart] = max(times)
        sequential[chart] = sum(times) * len(orgs) / len(times)
        print(
            f"  {'with chart   ' if chart else 'without chart'}: chain min {min(times):.3f} s, "
            f"median {statistics.median(times):.3f} s, max (the bound) {max(times):.3f} s; "
            f"sequential {sum(times):.1f} s for {len(times)} → {sequential[chart]:.0f} s for "
            f"{len(orgs)} (extrapolated)" + (f"; {bad} incomplete!" if bad else "")
        )
    print_segments(max(chain_runs[False], key=lambda r: r.seconds))

    runs = {}
    for chart in (False, True):
        db = await asyncio.to_thread(databases.new)
        ids = await asyncio.to_thread(add_digest_links, db, orgs, future)
        instruments.real_chart = chart
        label = f"one digests run, {'with chart' if chart else 'chart stubbed'}"
        print(f"\n[{engine}] {label} (load average {os.getloadavg()[0]:.2f} before):")
        run = await digest_run(deps, db, ids, instruments, sandbox)
        print_run(label, run)
        print_segments(run)
        runs[(engine, chart)] = run
    return Figures(bound, sequential, runs)


async def amain(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)  # APScheduler's "skipped: max instances" warnings
    sandbox = Sandbox(args.orgs, args.latency, args.polls_before_ready)
    fake = FakeSlack().__enter__()
    tmp = tempfile.TemporaryDirectory(prefix="bench-fanout-")
    engines: list[tuple[str, str | None]] = [("sqlite", None)]
    if os.environ.get("TEST_POSTGRES_URL"):
        engines.append(("postgresql", os.environ["TEST_POSTGRES_URL"]))
    deps = None
    figures: dict[str, Figures] = {}
    try:
        info = sandbox.info
        orgs = info["extra_orgs"]
        print(
            f"sandbox: {len(orgs)} orgs linked, {args.latency * 1000:.0f} ms per request, "
            f"{args.polls_before_ready} × 102 before each result, rate limit "
            f"{info['rate_limit']} per {info['rate_window_seconds']:g} s per org"
        )
        instruments = Instruments()
        for engine, pg_url in engines:
            databases = Databases(Path(tmp.name), pg_url)
            try:
                setup_db = await asyncio.to_thread(databases.new)
                settings = Settings(
                    _env_file=None,
                    MONGODB_ATLAS_BASE_URL=info["url"],
                    MONGODB_ATLAS_CLIENT_ID=info["client_id"],
                    MONGODB_ATLAS_CLIENT_SECRET=info["client_secret"],
                    SLACK_API_URL=fake.base_url,
                    SLACK_BOT_TOKEN="xoxb-bench",
                    DATABASE_URL=setup_db.engine.url.render_as_string(hide_password=False),
                    BOT_POLL_SECONDS=POLL_SECONDS,
                )
                if deps is None:
                    # One bot process for the whole bench: one Atlas client (token, pool, budget).
                    deps = build_deps(settings, db=setup_db, worker="bench-fanout")
                    instruments.install(deps.atlas)
                deps = dataclasses.replace(deps, settings=settings)
                figures[engine] = await bench_digests(
                    sandbox, databases, engine, orgs, args.chains, deps, instruments
                )
            finally:
                databases.close()

        threshold_results = []
        if not args.skip_thresholds and deps is not None:
            databases = Databases(Path(tmp.name), None)
            try:
                db = await asyncio.to_thread(databases.new)
                started = time.perf_counter()
                count = await asyncio.to_thread(add_threshold_links, db, orgs, args.channels)
                print(
                    f"\nthresholds: {count:,} links with a threshold ({len(orgs)} orgs × "
                    f"{args.channels} channels), set up in {time.perf_counter() - started:.1f} s"
                )
                threshold_results = await threshold_runs(deps, db, sandbox, instruments)
                for r in threshold_results:
                    print(
                        f"  {r['label']}: {r['seconds']:.2f} s ({r['fetch_seconds']:.2f} s reading "
                        f"the orgs at CONCURRENT_ORGS = {alerts.CONCURRENT_ORGS}, then "
                        f"{r['seconds'] - r['fetch_seconds']:.2f} s recording {count:,} links, "
                        f"{(r['seconds'] - r['fetch_seconds']) / count * 1000:.1f} ms each); "
                        f"{r['pending']} listInvoicePending (at most {r['per_org']} per org), "
                        f"{r['limited']} × 429; CPU bot {r['bot_cpu']:.1f} s, sandbox "
                        f"{r['sandbox_cpu']:.1f} s; {r['report']}"
                    )
            finally:
                databases.close()

        log = sandbox.log()
        print_summary(args, info, figures, threshold_results, log, len(orgs))
    finally:
        if deps is not None:
            await deps.atlas.aclose()
        fake.__exit__(None, None, None)
        sandbox.stop()
        tmp.cleanup()


def print_summary(
    args: argparse.Namespace,
    info: dict[str, Any],
    figures: dict[str, Figures],
    threshold_results: list[dict[str, Any]],
    log: list[tuple[float, str | None, str | None, int | None]],
    orgs: int,
) -> None:
    api = [(t, org, op, status) for t, org, op, status in log if org is not None]
    limited = sum(1 for *_, status in api if status == 429)
    per_org: dict[str, list[float]] = defaultdict(list)
    for t, org, _, _ in api:
        per_org[org].append(t)
    window = info["rate_window_seconds"]
    most = max((max_per_window(times, window) for times in per_org.values()), default=0)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    print(
        f"\nrate limit: {len(api):,} Atlas requests in all, {limited} answered 429; most requests "
        f"to one org in any {window:g} s window: {most} (limit {info['rate_limit']})"
    )
    in_run = max(
        (
            max(Counter(org for org, *_ in run.trace.requests).values(), default=0)
            for fig in figures.values()
            for run in fig.runs.values()
        ),
        default=0,
    )
    print(
        f"  (every phase of the bench counted together; within one digests run an org got at "
        f"most {in_run} requests)"
    )
    rate_ok = limited == 0 and most <= info["rate_limit"]
    print()
    for engine, fig in figures.items():
        for chart in (False, True):
            run = fig.runs[(engine, chart)]
            bound = fig.bound[chart]
            ratio = run.seconds / bound
            speedup = fig.sequential[chart] / run.seconds
            what = "with chart (as shipped)" if chart else "chart stubbed (the target)"
            print(
                f"[{engine}] {what}: run {run.seconds:.2f} s, bound {bound:.3f} s → "
                f"{ratio:.1f}x the bound; sequential {fig.sequential[chart]:.0f} s → "
                f"{speedup:.1f}x faster than sequential"
            )
            cores = os.cpu_count() or 1
            machine = (run.bot_cpu + run.sandbox_cpu) / cores
            print(
                f"    CPU floors: the bot used {run.bot_cpu:.1f} s of CPU ({run.bot_cpu / bound:.1f}x "
                f"the bound: at this CPU cost one process cannot finish sooner); bot + sandbox "
                f"{run.bot_cpu + run.sandbox_cpu:.1f} s over {cores} cores = {machine:.1f} s "
                f"({machine / bound:.1f}x the bound); the run is {run.seconds / run.bot_cpu:.2f}x "
                "the bot's CPU time"
            )
            if chart and run.trace.charts:
                chart_cpu = sum(c for _, c in run.trace.charts)
                print(
                    f"    of which charts {chart_cpu:.1f} s ({chart_cpu / run.orgs * 1000:.0f} ms "
                    f"each); without them {run.bot_cpu - chart_cpu:.1f} s"
                )
    print()
    for engine, fig in figures.items():
        for chart in (False, True):
            run = fig.runs[(engine, chart)]
            ratio = run.seconds / fig.bound[chart]
            tag = "target" if not chart else "as shipped, info"
            print(
                f"{verdict(ratio <= TARGET_RATIO and run.complete)}  [{engine}] digests run "
                f"{'without' if not chart else 'with'} chart: {ratio:.1f}x the slowest chain "
                f"(≤ {TARGET_RATIO}x; {tag}); {run.queued}/{orgs} in the outbox"
            )
    print(f"{verdict(rate_ok)}  rate limit: {limited} × 429, max {most} per org per {window:g} s")
    for r in threshold_results:
        print(
            f"{verdict(r['pending'] <= orgs)}  thresholds {r['label']}: {r['pending']} "
            f"listInvoicePending (≤ {orgs}), {r['seconds']:.1f} s"
        )


def code_version() -> str:
    """The commit measured, and the bot's files that differ from it (others edit as we run)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.rstrip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = git("status", "--porcelain", "--", "bot", "storage").splitlines()
    if not changed:
        return f"commit {commit}"
    names = ", ".join(line[3:] for line in changed)
    return f"commit {commit} + uncommitted changes in {names}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=500, help="linked orgs (default 500)")
    parser.add_argument("--chains", type=int, default=20, help="single-org chains timed (20)")
    parser.add_argument("--channels", type=int, default=10, help="channels per org (thresholds)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per Atlas request")
    parser.add_argument("--polls-before-ready", type=int, default=2, help="102s before a result")
    parser.add_argument("--skip-thresholds", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.chains <= args.orgs:
        parser.error("--chains must be between 1 and --orgs")
    print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; {code_version()}"
    )
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
