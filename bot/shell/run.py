"""The shell's loop: read ``/atlas-billing …`` lines, dispatch them to the real Bolt app, show replies.

Each line becomes a signed slash-command request handed to ``app.async_dispatch``
(the same app and handlers as ``serve``); the Web API calls the handlers make go
to ``TerminalSlack``, which prints them. Scheduled work (Cost Explorer results)
runs on the same event loop and appears as it happens.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlencode

from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.atlas import AtlasClient
from bot.core.config import Settings
from bot.deps import Deps
from bot.render.terminal import mrkdwn_to_text
from bot.runtime.app import build_app, build_deps
from bot.runtime.background import Background
from bot.runtime.jobs import JOBS, Jobs
from bot.runtime.localserver import LocalServer
from bot.services.credentials import atlas_client
from bot.shell.terminal_slack import SHELL_CHANNEL, SHELL_TEAM, SHELL_USER, TerminalSlack
from bot.slack.client import slack_client
from storage import Database, costs, links, outbox

if TYPE_CHECKING:
    from bot.sandbox import SandboxServer

PROMPT = "atlas-billing> "
DRAIN_SECONDS = 120.0


class Shell:
    """One shell session: its sandbox (unless real credentials are set), database and app."""

    def __init__(
        self, settings: Settings, *, org_id: str | None, echo: Callable[[str], None]
    ) -> None:
        self._settings = settings
        self._org_id = org_id
        self._echo = echo
        self._workdir = Path(tempfile.mkdtemp(prefix="billing-bot-shell-"))
        self._sandbox: SandboxServer | None = None
        self._servers: list[LocalServer] = []
        self._counter = itertools.count(1)
        self._secret = secrets.token_hex(16)

    # ---- set-up ------------------------------------------------------------------------------

    def _atlas(self) -> tuple[AtlasClient, str | None]:
        """Configured credentials, or the built-in sandbox and its first org."""
        if self._settings.has_atlas_credentials:
            return atlas_client(self._settings), self._org_id
        from bot.sandbox import SandboxServer

        self._sandbox = SandboxServer(seed=1).start()
        creds = self._sandbox.data.credentials
        client = AtlasClient.with_credentials(
            base_url=self._sandbox.base_url,
            client_id=creds.client_id,
            client_secret=creds.client_secret,
        )
        org = self._org_id or self._sandbox.data.org_ids[0]
        self._echo(
            f"Sandbox Atlas at {self._sandbox.base_url} (no Atlas credentials configured); "
            f"orgs: {', '.join(self._sandbox.data.org_ids)}\n"
        )
        return client, org

    def build(self) -> tuple[Deps, AsyncApp]:
        atlas, org = self._atlas()
        terminal = TerminalSlack(self._echo, files_dir=self._workdir / "files")
        server = LocalServer(terminal.app).start()
        self._servers.append(server)
        terminal.base_url = server.url
        self._terminal = terminal
        database_url = (
            self._settings.DATABASE_URL
            if self._sandbox is None
            else f"sqlite:///{self._workdir / 'shell.db'}"
        )
        settings = self._settings.model_copy(
            update={
                "SLACK_API_URL": server.url + "/api/",
                "SLACK_BOT_TOKEN": "xoxb-shell",
                "SLACK_SIGNING_SECRET": self._secret,
            }
        )
        db = Database(database_url)
        db.upgrade()
        deps = build_deps(
            settings,
            atlas=atlas,
            slack=slack_client(settings),
            db=db,
            background=Background(inline=True),  # each line's work is done before the next
        )
        if org:
            with db.session() as session:
                links.add_link(
                    session,
                    team_id=SHELL_TEAM,
                    channel_id=SHELL_CHANNEL,
                    org_id=org,
                    created_by=SHELL_USER,
                )
            self._echo(f"This shell's channel #{SHELL_CHANNEL} is linked to org {org}.\n")
        return deps, build_app(deps)

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        if self._sandbox is not None:
            self._sandbox.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    # ---- one line ------------------------------------------------------------------------------

    def _request(self, text: str) -> AsyncBoltRequest:
        n = next(self._counter)
        body = urlencode(
            {
                "token": "shell",
                "team_id": SHELL_TEAM,
                "team_domain": "shell",
                "channel_id": SHELL_CHANNEL,
                "channel_name": "shell",
                "user_id": SHELL_USER,
                "user_name": "you",
                "command": "/atlas-billing",
                "text": text,
                "api_app_id": "A0SHELL",
                "response_url": self._terminal.response_url(str(n)),
                "trigger_id": f"shell.{n}",
            }
        )
        timestamp = str(int(time.time()))
        signature = SignatureVerifier(self._secret).generate_signature(
            timestamp=timestamp, body=body
        )
        assert signature is not None  # slack_sdk returns None only without a timestamp
        headers: dict[str, str | Sequence[str]] = {
            "content-type": "application/x-www-form-urlencoded",
            "x-slack-request-timestamp": timestamp,
            "x-slack-signature": signature,
        }
        return AsyncBoltRequest(body=body, headers=headers)

    async def dispatch(self, app: AsyncApp, line: str, deps: Deps) -> None:
        text = line.strip()
        if text.startswith("jobs run"):
            await self.run_job(deps, text.removeprefix("jobs run").strip())
            return
        if text.startswith("/atlas-billing"):
            text = text[len("/atlas-billing") :]
        elif text.startswith("/"):
            self._echo("Only the /atlas-billing command exists here; try /atlas-billing help\n")
            return
        response = await app.async_dispatch(self._request(text.strip()))
        if response.body:
            try:
                reply = json.loads(response.body).get("text", response.body)
            except ValueError:
                reply = response.body
            self._echo(f"── only visible to you\n{mrkdwn_to_text(reply)}\n")

    async def run_job(self, deps: Deps, name: str) -> None:
        """``jobs run NAME`` typed in the shell: one tick now, then the outbox, so posts show."""
        if name not in JOBS:
            self._echo(f"Jobs: {', '.join(JOBS)}\n")
            return
        report = await JOBS[name](deps)
        if name != "outbox":
            await JOBS["outbox"](deps)
        self._echo(f"── job {name}: {report}\n")


async def _read_line(stream: TextIO, prompt: str | None) -> str:
    if prompt:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    return await asyncio.to_thread(stream.readline)


async def _drain(deps: Deps, echo: Callable[[str], None]) -> None:
    """At the end of scripted input, wait (bounded) for pending queries and queued posts."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while await deps.db.run(costs.pending_count) or await deps.db.run(outbox.pending_count):
        if time.monotonic() > deadline:
            echo("Some Cost Explorer queries are still running; their results are not shown.\n")
            return
        await asyncio.sleep(0.5)


async def run(
    settings: Settings, *, org_id: str | None, stdin: TextIO, echo: Callable[[str], None]
) -> int:
    shell = Shell(settings, org_id=org_id, echo=echo)
    try:
        deps, app = shell.build()
        jobs = Jobs(deps)
        jobs.start()
        interactive = stdin.isatty()
        if interactive:
            echo("Type /atlas-billing help, jobs run thresholds|digests|poll|outbox, or exit.\n")
        try:
            while True:
                line = await _read_line(stdin, PROMPT if interactive else None)
                if not line:
                    break
                if line.strip() in ("exit", "quit"):
                    break
                if line.strip():
                    await shell.dispatch(app, line, deps)
            if not interactive:
                await _drain(deps, echo)
        finally:
            await jobs.stop()
            await deps.aclose()
    finally:
        shell.close()
    return 0
