"""Slack acknowledgement latency of the real bot under load, against a bare Bolt app.

Target: the bot's p99 ack latency is at most 1.3x the bare app's and under 200 ms
("work after the acknowledgement must not starve the acknowledgements").

    .venv/bin/python bench/ack_latency.py [--requests 200] [--concurrency 20] [--rounds 3]

Four processes, so that no two of them share an event loop or a GIL:

* the bot: ``billing-bot serve``, configured through the environment like in
  production, on a migrated temporary SQLite database in which channel C_LINKED
  of team T1 is linked to the sandbox's first org;
* the baseline: a bare slack_bolt ``AsyncApp`` whose only listener awaits
  ``ack()``, served by uvicorn (httptools) under Starlette exactly as
  ``billing-bot serve`` serves the bot (``bench/ack_latency.py --serve-baseline PORT``);
* the "remote" services: the sandbox Atlas, answering after an added latency like
  a service across a network, and the fake Slack Web API (``--serve-remotes``,
  driven over a pipe);
* this one: the load generator (aiohttp).

Each round sends signed ``/atlas-billing`` commands, ``help`` and ``pending``
interleaved, with a fixed number in flight, to one server and then the other (the
order alternates between rounds), after a warm-up that is not counted. Latency is
from sending a request to receiving its HTTP response, which Bolt sends once the
listener has called ``ack()``. The bot's round ends when the fake Slack has received
one ``chat.postMessage`` per ``pending`` command, so its Atlas work really ran, and
ran during its own round only. The summary is the median over rounds of each
percentile. Exits 0 whether the targets pass or not: it reports, CI does not run it.

``--mix help`` or ``--mix pending`` sends one kind only, and ``--profile-bot FILE``
runs the bot under cProfile: both are for finding where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "/atlas-billing"
SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench"
TEAM = "T1"
CHANNEL = "C_LINKED"
USER = "U_MEMBER"
RATIO_TARGET = 1.3
ABSOLUTE_TARGET_MS = 200.0
ATLAS_LATENCY_SECONDS = 0.05
STARTUP_TIMEOUT_SECONDS = 60.0
POSTS_TIMEOUT_SECONDS = 60.0


# ---- the baseline (its own process) --------------------------------------------------------------


def serve_baseline(port: int) -> None:
    """A bare Bolt app that only acknowledges, served the way ``billing-bot serve`` serves the bot."""
    import uvicorn
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from slack_bolt.async_app import AsyncAck, AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    app = AsyncApp(
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        client=AsyncWebClient(
            token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"]
        ),
    )

    @app.command(COMMAND)
    async def on_command(ack: AsyncAck) -> None:
        await ack()

    handler = AsyncSlackRequestHandler(app)

    async def events(request: Request) -> Response:
        return await handler.handle(request)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    asgi = Starlette(
        routes=[
            Route("/slack/events", events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    # The uvicorn settings of bot.runtime.server.serve.
    uvicorn.run(asgi, host="127.0.0.1", port=port, http="httptools", log_level="info")


# ---- the remote services (their own process) -----------------------------------------------------


def post_count(fake: Any) -> int:
    return sum(1 for p in fake.calls_to("chat.postMessage") if p.get("channel") == CHANNEL)


def posts_reach(fake: Any, target: int) -> Any:
    return lambda: post_count(fake) >= target


def serve_remotes(conn: Any, atlas_latency: float) -> None:
    """The sandbox Atlas and the fake Slack; answers the bench's questions over ``conn``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from http.server import ThreadingHTTPServer

    import tests.fakes.slack
    from bot.sandbox import SandboxServer
    from tests.fakes.slack import FakeSlack

    # socketserver's default listen backlog of 5 drops the SYNs of a burst of new
    # connections (slack_sdk opens one per call), and each drop costs the caller a 1 s, then
    # 3 s, ... retransmit: the fake would look like a Slack that stalls for seconds.
    class Backlogged(ThreadingHTTPServer):
        request_queue_size = 1024

    tests.fakes.slack.ThreadingHTTPServer = Backlogged  # type: ignore[misc]

    with SandboxServer(seed=1) as sandbox, FakeSlack() as fake:
        sandbox.state.latency_seconds = atlas_latency
        # The rounds send ~330 `pending` to one org within a minute, past the sandbox's
        # Atlas-like 100 per minute; the bench measures acks, not rate limiting.
        sandbox.state.rate_limit = 1_000_000
        creds = sandbox.data.credentials
        conn.send(
            {
                "atlas_url": sandbox.base_url,
                "client_id": creds.client_id,
                "client_secret": creds.client_secret,
                "org_id": sandbox.data.org_ids[0],
                "slack_url": fake.url,
                "slack_api_url": fake.base_url,
            }
        )
        while True:
            request, *args = conn.recv()
            if request == "stop":
                return
            if request == "wait_posts":
                target, timeout = args
                with contextlib.suppress(TimeoutError):
                    fake.wait_for(posts_reach(fake, target), timeout)
            conn.send(
                {
                    "posts": post_count(fake),
                    "responses": [r.body for r in fake.responses],
                    "errors": fake.errors,
                    "atlas_errors": sum(
                        1
                        for r in list(sandbox.state.requests)
                        if r.path.startswith("/api/atlas/v2/") and (r.status or 0) >= 400
                    ),
                }
            )


class Remotes:
    """The bench's handle on the remote-services process."""

    def __init__(self, atlas_latency: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=serve_remotes, args=(child, atlas_latency), name="remotes", daemon=True
        )
        self.process.start()
        if not self._conn.poll(STARTUP_TIMEOUT_SECONDS):
            self.stop()
            raise RuntimeError("the sandbox Atlas and fake Slack did not start")
        self.info: dict[str, Any] = self._conn.recv()

    async def status(self, wait_for_posts: int | None = None) -> dict[str, Any]:
        """Post count, response_url replies and errors; first waits for that many posts."""
        if wait_for_posts is None:
            message: tuple[object, ...] = ("status",)
        else:
            message = ("wait_posts", wait_for_posts, POSTS_TIMEOUT_SECONDS)

        def ask() -> dict[str, Any]:
            self._conn.send(message)
            reply: dict[str, Any] = self._conn.recv()  # serve_remotes sends a dict
            return reply

        return await asyncio.to_thread(ask)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# ---- the servers under test ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # (host, port) for AF_INET
        return port


def clean_env(**values: str) -> dict[str, str]:
    """This environment without any of the bot's settings, plus ``values``."""
    prefixes = ("SLACK_", "MONGODB_ATLAS_", "BOT_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(prefixes) and k not in ("DATABASE_URL", "PORT")
    }
    env.update(values)
    return env


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time process ``pid`` has used so far (Linux; NaN elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self, lines: int = 30, *, access_log: bool = True) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        kept = [ln for ln in text.splitlines() if access_log or '"POST /slack/events' not in ln]
        return "\n".join(kept[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT, not SIGTERM: uvicorn re-raises the signal it caught once it has shut
            # down, and only SIGINT (KeyboardInterrupt) still lets cProfile write its file.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(
    name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path
) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        # In the temporary directory, so that no stray .env is read.
        process = subprocess.Popen(
            argv, env=env, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT
        )
    return Server(name, process, f"http://127.0.0.1:{port}", log)


async def wait_healthy(server: Server, session: Any) -> None:
    import aiohttp

    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.tail()}"
            )
        try:
            async with session.get(server.url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer /healthz in time:\n{server.tail()}")


# ---- load ----------------------------------------------------------------------------------------

MIX: tuple[str, ...] = ("help", "pending")


def texts_for(n: int) -> list[str]:
    return [MIX[i % len(MIX)] for i in range(n)]


@dataclass
class Sample:
    text: str
    status: int
    ms: float
    sent_at: float
    body: bytes


@dataclass
class RoundResult:
    name: str
    samples: list[Sample]
    wall_seconds: float
    posts_after_start: float | None = None
    posts_after_last_ack: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return sorted(s.ms for s in self.samples)

    def pct(self, p: float) -> float:
        return percentile(self.latencies, p)


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Load:
    """Signed slash commands, ``concurrency`` at a time, each signed just before it is sent.

    aiohttp sends them, not httpx: at 20 in flight httpx's connection pool spends
    several ms of CPU per request, and the load generator, not the server, was the
    bottleneck (a bare Bolt app measured ~130 req/s instead of ~1,400).
    """

    def __init__(self, session: Any, slack_url: str, concurrency: int) -> None:
        self.session = session
        self.slack_url = slack_url
        self.concurrency = concurrency
        self._n = 0

    async def fire(self, url: str, texts: list[str]) -> list[Sample]:
        from tests.fakes.slack import SlackDriver

        driver = SlackDriver(url + "/slack/events", SIGNING_SECRET)
        gate = asyncio.Semaphore(self.concurrency)
        origin = time.perf_counter()

        async def one(text: str) -> Sample:
            async with gate:
                self._n += 1
                form = driver.command_body(
                    text,
                    user_id=USER,
                    channel_id=CHANNEL,
                    team_id=TEAM,
                    response_url=f"{self.slack_url}response/command-{self._n}",
                )
                body = urlencode(form)
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                headers.update(driver.sign(body))
                started = time.perf_counter()
                async with self.session.post(
                    driver.url, data=body.encode(), headers=headers
                ) as response:
                    content = await response.read()
                ms = (time.perf_counter() - started) * 1000
            return Sample(text, response.status, ms, started - origin, content)

        return list(await asyncio.gather(*(one(t) for t in texts)))


def check_acks(samples: list[Sample], *, bot: bool) -> list[str]:
    problems = []
    bad = [s for s in samples if s.status != 200]
    if bad:
        problems.append(
            f"{len(bad)} responses were not 200 (first: {bad[0].status} {bad[0].body[:200]!r})"
        )
    if bot:  # the bot answers `help` in the ack itself
        for s in samples:
            if s.status == 200 and s.text == "help":
                try:
                    text = json.loads(s.body).get("text", "")
                except ValueError:
                    text = ""
                if "Usage" not in text:
                    problems.append(f"a help ack carried no usage text: {s.body[:200]!r}")
                    break
    return problems


async def run_round(
    server: Server, remotes: Remotes, load: Load, *, requests: int, warmup: int
) -> RoundResult:
    is_bot = server.name == "bot"
    pids = {"server": server.process.pid, "remotes": remotes.process.pid}
    start = await remotes.status()
    warm = await load.fire(server.url, texts_for(warmup))
    problems = [f"warm-up: {p}" for p in check_acks(warm, bot=is_bot)]
    before = start["posts"]
    if is_bot:
        # Let the warm-up's work finish so it does not weigh on the measured round.
        target = before + texts_for(warmup).count("pending")
        before = (await remotes.status(wait_for_posts=target))["posts"]
        if before < target:
            problems.append(f"warm-up: only {before - start['posts']} posts arrived")

    texts = texts_for(requests)
    cpu_before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    load_cpu = time.process_time()
    started = time.perf_counter()
    samples = await load.fire(server.url, texts)
    last_ack = time.perf_counter()
    result = RoundResult(server.name, samples, last_ack - started, problems=problems)
    result.problems += check_acks(samples, bot=is_bot)
    wanted = texts.count("pending") if is_bot else 0
    end = await remotes.status(wait_for_posts=before + wanted if wanted else None)
    if wanted:
        if end["posts"] >= before + wanted:
            done = time.perf_counter()
            result.posts_after_start = done - started
            result.posts_after_last_ack = done - last_ack
        else:
            result.problems.append(
                f"only {end['posts'] - before} of {wanted} pending posts arrived "
                f"within {POSTS_TIMEOUT_SECONDS:g}s"
            )
    result.cpu = {k: cpu_seconds(pid) - cpu_before[k] for k, pid in pids.items()}
    result.cpu["load"] = time.process_time() - load_cpu
    replies = end["responses"][len(start["responses"]) :]
    if replies:
        result.problems.append(f"{len(replies)} replies to response_url, first: {replies[0]}")
    if end["atlas_errors"] > start["atlas_errors"]:
        result.problems.append(
            f"the sandbox answered {end['atlas_errors'] - start['atlas_errors']} Atlas calls "
            "with an error"
        )
    if len(end["errors"]) > len(start["errors"]):
        result.problems.append(f"the fake Slack failed: {end['errors'][-1][:300]}")
    return result


# ---- the benchmark -------------------------------------------------------------------------------


def round_line(result: RoundResult) -> str:
    lat = result.latencies
    n = len(lat)
    cpu = " ".join(f"{k} {v * 1000 / n:.1f}" for k, v in result.cpu.items())
    text = (
        f"  {result.name:<8} n={n:<4} p50={result.pct(50):6.1f}  p90={result.pct(90):6.1f}  "
        f"p99={result.pct(99):6.1f}  max={lat[-1]:6.1f} ms  {n / result.wall_seconds:5.0f} req/s  "
        f"CPU ms/req: {cpu}"
    )
    if result.posts_after_start is not None:
        pending = sum(1 for s in result.samples if s.text == "pending")
        text += (
            f"\n           its {pending} pending posts all arrived {result.posts_after_start:.2f}s "
            f"after the first send ({result.posts_after_last_ack:.2f}s after the last ack)"
        )
    return text


def slowest_line(result: RoundResult, count: int = 5) -> str:
    worst = sorted(result.samples, key=lambda s: s.ms, reverse=True)[:count]
    return "    slowest: " + ", ".join(f"{s.text}@{s.sent_at:.3f}s={s.ms:.0f}ms" for s in worst)


async def probe_atlas(session: Any, remotes: Remotes) -> float:
    """Median round trip of an (unauthenticated, so 401) Atlas call to the sandbox, in ms."""
    url = f"{remotes.info['atlas_url']}/api/atlas/v2/orgs/{remotes.info['org_id']}/invoices/pending"
    times = []
    for _ in range(5):
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def link_channel(database_url: str, org_id: str) -> None:
    from storage import Database, links

    db = Database(database_url)
    try:
        db.upgrade()
        with db.session() as session:
            links.add_link(
                session, team_id=TEAM, channel_id=CHANNEL, org_id=org_id, created_by="U_ADMIN"
            )
    finally:
        db.dispose()


async def bench(args: argparse.Namespace, workdir: Path, remotes: Remotes) -> None:
    import aiohttp

    info = remotes.info
    database_url = f"sqlite:///{workdir / 'bot.db'}"
    link_channel(database_url, info["org_id"])

    common = {
        "SLACK_API_URL": info["slack_api_url"],
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    }
    bot_port, base_port = free_port(), free_port()
    billing_bot = Path(sys.executable).parent / "billing-bot"
    if not billing_bot.exists():
        billing_bot = Path(shutil.which("billing-bot") or "billing-bot")
    bot_argv = [str(billing_bot), "serve", "--port", str(bot_port)]
    if args.profile_bot:
        profile = str(Path(args.profile_bot).resolve())
        bot_argv = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "bot", *bot_argv[1:]]
    bot_env = clean_env(
        **common,
        MONGODB_ATLAS_BASE_URL=info["atlas_url"],
        MONGODB_ATLAS_CLIENT_ID=info["client_id"],
        MONGODB_ATLAS_CLIENT_SECRET=info["client_secret"],
        DATABASE_URL=database_url,
        PORT=str(bot_port),
    )
    base_argv = [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(base_port)]
    servers = {
        "bot": start_server("bot", bot_argv, bot_env, bot_port, workdir),
        "baseline": start_server("baseline", base_argv, clean_env(**common), base_port, workdir),
    }
    results: dict[str, list[RoundResult]] = {"bot": [], "baseline": []}
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for server in servers.values():
                await wait_healthy(server, session)
            atlas_ms = await probe_atlas(session, remotes)
            print(
                f"ack latency: {args.requests} x /atlas-billing {'|'.join(MIX)} per round, "
                f"{args.concurrency} in flight, {args.warmup} warm-up, {args.rounds} rounds, "
                f"{os.cpu_count()} CPUs; sandbox Atlas latency set to "
                f"{args.atlas_latency * 1000:.0f} ms, measured round trip {atlas_ms:.0f} ms"
            )
            load = Load(session, info["slack_url"], args.concurrency)
            for n in range(args.rounds):
                order = ("bot", "baseline") if n % 2 == 0 else ("baseline", "bot")
                print(f"round {n + 1}:")
                for name in order:
                    result = await run_round(
                        servers[name], remotes, load, requests=args.requests, warmup=args.warmup
                    )
                    results[name].append(result)
                    print(round_line(result))
                    if args.verbose:
                        print(slowest_line(result))
                    for problem in result.problems:
                        print(f"    PROBLEM: {problem}")
                    sys.stdout.flush()
    finally:
        for server in servers.values():
            server.stop()
    if args.verbose:
        for server in servers.values():
            print(f"--- {server.name} log, without the access log\n{server.tail(access_log=False)}")
    report(results)


def report(results: dict[str, list[RoundResult]]) -> None:
    def median_of(name: str, p: float) -> float:
        return statistics.median(r.pct(p) for r in results[name])

    print(f"median over {len(results['bot'])} rounds (ms):")
    for name in ("bot", "baseline"):
        rounds = results[name]
        print(
            f"  {name:<8} n={len(rounds[0].samples):<4} p50={median_of(name, 50):6.1f}  "
            f"p90={median_of(name, 90):6.1f}  p99={median_of(name, 99):6.1f}  "
            f"max={statistics.median(r.latencies[-1] for r in rounds):6.1f}"
        )
    bot_p99, base_p99 = median_of("bot", 99), median_of("baseline", 99)
    ratio = bot_p99 / base_p99 if base_p99 > 0 else math.inf
    verdict = "PASS" if ratio <= RATIO_TARGET else "FAIL"
    print(f"  {verdict}  bot p99 / baseline p99 = {ratio:.2f} (target <= {RATIO_TARGET})")
    verdict = "PASS" if bot_p99 < ABSOLUTE_TARGET_MS else "FAIL"
    print(f"  {verdict}  bot p99 = {bot_p99:.1f} ms (target < {ABSOLUTE_TARGET_MS:.0f} ms)")
    # Both are set together, once a round's pending posts have all arrived.
    posts = [
        (r.posts_after_start, r.posts_after_last_ack)
        for r in results["bot"]
        if r.posts_after_start is not None and r.posts_after_last_ack is not None
    ]
    if posts:
        print(
            "  the bot's pending posts all arrived "
            f"{statistics.median(start for start, _ in posts):.2f}s after the first send "
            f"(median; {statistics.median(last_ack for _, last_ack in posts):.2f}s "
            "after the last ack)"
        )
    problems = sum(len(r.problems) for rs in results.values() for r in rs)
    print(f"  correctness: {'OK' if problems == 0 else f'{problems} PROBLEMS (see above)'}")


def main() -> None:
    global MIX
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured commands per round")
    parser.add_argument("--concurrency", type=int, default=20, help="commands in flight")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted commands per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--atlas-latency",
        type=float,
        default=ATLAS_LATENCY_SECONDS,
        metavar="SECONDS",
        help="added to every sandbox Atlas answer (default 0.05)",
    )
    parser.add_argument(
        "--mix",
        default=",".join(MIX),
        help="the command texts, sent in turn (default help,pending)",
    )
    parser.add_argument(
        "--profile-bot", metavar="FILE", help="run the bot under cProfile, writing FILE at exit"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="the slowest requests and the servers' logs"
    )
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline)
        return
    MIX = tuple(t.strip() for t in args.mix.split(",") if t.strip())
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests.fakes.slack, when run as a script
    remotes = Remotes(args.atlas_latency)
    try:
        with tempfile.TemporaryDirectory(prefix="ack-latency-") as tmp:
            asyncio.run(bench(args, Path(tmp), remotes))
    finally:
        remotes.stop()


if __name__ == "__main__":
    main()
