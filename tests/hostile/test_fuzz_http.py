"""Generated `/atlas-billing` texts, signed like Slack, through the whole HTTP path of the running
bot: always a 200 within Slack's 3 seconds and a readable reply, and Atlas never sees a path part
that is not one the spec allows.

``HOSTILE_EXAMPLES`` sets how many texts each database engine gets (default 300, so the suite
stays quick; `.ci/run` sets the issue's figure, 10,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time

import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storage import links
from tests.app.conftest import CHANNEL, OTHER_CHANNEL, TEAM
from tests.hostile.strategies import command_texts

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "300"))
ACK_SECONDS = 3.0
REPLY_SECONDS = 10.0
UNEXPECTED = "Something went wrong inside the bot"

_ID = "[a-f0-9]{24}"
ATLAS_PATHS = re.compile(
    r"/api/oauth/(?:token|revoke)"
    rf"|/api/atlas/v2/orgs/{_ID}/invoices(?:/pending|/{_ID}(?:/csv)?)?"
    rf"|/api/atlas/v2/orgs/{_ID}/billing/costExplorer/usage(?:/[A-Za-z0-9]{{64}})?"
)


def bad_atlas_paths(bot) -> list[str]:
    return [r.path for r in list(bot.sandbox.state.requests) if not ATLAS_PATHS.fullmatch(r.path)]


def _readable(text: object) -> bool:
    return isinstance(text, str) and bool(text.strip()) and "Traceback" not in text


class Fuzzer:
    """One linked channel, commands sent from a thread with a blocking client, replies awaited."""

    def __init__(self, bot, org_id: str) -> None:
        self.bot = bot
        self.org_id = org_id
        self.http = httpx.Client(timeout=10)
        self.slowest = 0.0

    def relink(self) -> None:
        # `unlink` is among the generated commands; most others need the link to get anywhere.
        with self.bot.db.session() as session:
            linked = links.links_for_channel(session, team_id=TEAM, channel_id=CHANNEL)
        if self.org_id not in [row.org_id for row in linked]:
            self.bot.link(self.org_id)

    def send(self, text: str, *, user_id: str, channel_id: str) -> None:
        fake = self.bot.fake
        form = self.bot.driver.command_body(text, user_id=user_id, channel_id=channel_id)
        key = form["response_url"].rsplit("/", 1)[1]
        before = len(fake.calls)
        started = time.monotonic()
        response = self.http.send(self.bot.driver.request(form))
        elapsed = time.monotonic() - started
        self.slowest = max(self.slowest, elapsed)
        assert response.status_code == 200, (response.status_code, response.text[:300])
        assert elapsed < ACK_SECONDS, f"acknowledged after {elapsed:.2f}s"
        if response.content:
            ack = json.loads(response.content)
            assert _readable(ack.get("text")), ack
            assert ack.get("response_type") == "ephemeral", ack
            event("answered in the acknowledgement")
            return

        # Acknowledged empty: the answer follows on the response_url or in the channel.
        def answered():
            mine = [r.body for r in fake.responses if r.key == key]
            posted = [
                c
                for c in fake.calls[before:]
                if c.method in ("chat.postMessage", "views.open", "files.completeUploadExternal")
            ]
            return mine or posted

        replies = fake.wait_for(answered, timeout=REPLY_SECONDS)
        for reply in replies:
            if isinstance(reply, dict):  # a response_url post
                assert _readable(reply.get("text")) or reply.get("blocks"), reply
                assert UNEXPECTED not in str(reply.get("text")), reply
        event("answered afterwards")


def _sendable(text: str) -> bool:
    """Slack sends UTF-8: a lone surrogate can reach the grammar (tests/hostile/test_fuzz_grammar.py
    gives it every code point) but never this HTTP path."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def run(bot, org_id: str, ids: tuple[str, ...]) -> Fuzzer:
    fuzzer = Fuzzer(bot, org_id)
    # A hundred commands a second is far beyond any channel: at that pace the org's Atlas
    # rate limit (rightly) makes later commands wait for its window, past REPLY_SECONDS.
    # What is tested here is the input, so the sandbox's limit is lifted.
    bot.sandbox.state.rate_limit = 1_000_000

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        # One running bot serves every example: that is the point, not an accident.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(
        text=command_texts(ids=ids).filter(_sendable),
        user_id=st.sampled_from(["U_ADMIN", "U_ADMIN", "U_MEMBER"]),
        channel_id=st.sampled_from([CHANNEL, CHANNEL, CHANNEL, OTHER_CHANNEL]),
    )
    def one(text, user_id, channel_id):
        fuzzer.relink()
        fuzzer.send(text, user_id=user_id, channel_id=channel_id)
        assert bad_atlas_paths(bot) == []

    with fuzzer.http:
        one()
    return fuzzer


async def test_generated_commands_over_http_are_answered_and_never_reach_atlas_unchecked(
    bot, sandbox
):
    org = sandbox.data.org(sandbox.data.org_ids[0])
    ids = (org.id, sandbox.data.org_ids[1], *(invoice.id for invoice in org.invoices))
    started = time.monotonic()
    # Blocking HTTP from a worker thread: the bot has its own loop in its own thread, and this
    # test's loop stays free.
    fuzzer = await asyncio.to_thread(run, bot, org.id, ids)
    # Work acknowledged last may still be under way: let it finish, then look at everything.
    await asyncio.sleep(0.5)
    assert bad_atlas_paths(bot) == []
    assert not bot.fake.errors, bot.fake.errors[0]
    unexpected = [r.body for r in bot.fake.responses if UNEXPECTED in str(r.body.get("text"))]
    assert not unexpected, unexpected[0]
    print(
        f"\n{EXAMPLES} generated commands in {time.monotonic() - started:.1f}s; slowest "
        f"acknowledgement {fuzzer.slowest * 1000:.0f} ms; "
        f"{len(bot.atlas_requests())} Atlas API requests, all on valid paths"
    )
