"""`costs` is open to everyone in a linked channel: an identical query still running is not
started again, and each person and channel may only have so many running at once."""

from __future__ import annotations

import itertools

import pytest
from sqlmodel import select

from bot.services.costs import MAX_OPEN_PER_CHANNEL, MAX_OPEN_PER_USER
from storage.models import CostQuery
from tests.app.helpers import eventually
from tests.fakes.clock import month


@pytest.fixture
def org(sandbox):
    org = sandbox.data.org(sandbox.data.org_ids[0])
    sandbox.state.cost_polls_before_ready = 10_000  # every query stays "not ready"
    return org


MONTHS = [month(n) for n in range(-20, -13)]  # seven months inside Cost Explorer's window


def _created(bot) -> int:
    return [r.operation for r in bot.atlas_requests()].count("createCostExplorerProcess")


def _queries(bot) -> list[CostQuery]:
    with bot.db.session() as session:
        return list(session.exec(select(CostQuery)))


async def _costs(bot, text: str, user: str = "U_MEMBER") -> str | None:
    """Run `costs …`; the ephemeral refusal if there was one, else None once it is stored."""
    responses, stored = len(bot.fake.responses), len(_queries(bot))
    ack = await bot.command(f"costs {text}", user_id=user)
    assert ack.status_code == 200 and not ack.content, ack.text  # not a usage error
    await eventually(
        lambda: len(bot.fake.responses) > responses or len(_queries(bot)) > stored,
        what=f"costs {text} to be refused or stored",
    )
    if len(bot.fake.responses) > responses:
        return bot.fake.responses[-1].body["text"]
    return None


async def test_the_same_query_still_running_is_not_started_twice(bot, org):
    bot.link(org.id)
    assert await _costs(bot, f"{month(-20)} {month(-18)} by projects", user="U_ADMIN") is None
    refusal = await _costs(bot, f"{month(-20)} {month(-18)} by projects")
    assert "same query" in refusal and "<@U_ADMIN>" in refusal
    assert (_created(bot), len(_queries(bot))) == (1, 1)
    # Another grouping is another query.
    assert await _costs(bot, f"{month(-20)} {month(-18)} by services") is None
    assert _created(bot) == 2


async def test_each_person_and_each_channel_has_a_cap(bot, org):
    bot.link(org.id)
    spans = [f"{a} {b}" for a, b in itertools.pairwise(MONTHS)]
    for span in spans[:MAX_OPEN_PER_USER]:
        assert await _costs(bot, span) is None
    refusal = await _costs(bot, spans[MAX_OPEN_PER_USER])
    assert f"You have {MAX_OPEN_PER_USER} Cost Explorer queries running" in refusal
    assert _created(bot) == MAX_OPEN_PER_USER  # refused before Atlas was asked

    # Others may still start theirs, up to the channel's cap.
    users = [f"U_OTHER{n}" for n in range(MAX_OPEN_PER_CHANNEL)]
    started = MAX_OPEN_PER_USER
    for n, user in enumerate(users):
        if started == MAX_OPEN_PER_CHANNEL:
            break
        assert await _costs(bot, f"{month(n - 20)} {month(n - 18)}", user=user) is None
        started += 1
    refusal = await _costs(bot, f"{month(-8)} {month(-7)}", user="U_LATECOMER")
    assert f"This channel has {MAX_OPEN_PER_CHANNEL} Cost Explorer queries running" in refusal
    assert _created(bot) == MAX_OPEN_PER_CHANNEL


async def test_a_finished_query_frees_its_place(bot, org):
    bot.link(org.id)
    assert await _costs(bot, f"{month(-20)} {month(-19)}") is None
    with bot.db.session() as session:
        [row] = session.exec(select(CostQuery)).all()
        row.status = "done"
        session.add(row)
    assert await _costs(bot, f"{month(-20)} {month(-19)}") is None
    assert _created(bot) == 2
