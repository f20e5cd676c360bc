"""The links handlers on the light fixture: what they answer, what they store, no server."""

from __future__ import annotations

import pytest

from bot.render.explain import Refusal
from handlers import links, settings
from handlers.grammar import Status, Threshold, Unlink

ORG = "5f1a2b3c4d5e6f7a8b9c0d1e"


async def test_status_of_an_unlinked_channel_says_how_to_link(light) -> None:
    await links.status(light.invocation(), Status())
    [reply] = light.replies
    assert reply["response_type"] == "ephemeral" and "link ORG_ID" in reply["text"]
    assert light.slack.calls == []


async def test_status_lists_the_channels_org(light) -> None:
    light.link(ORG)
    await links.status(light.invocation(), Status())
    assert ORG in light.replies[-1]["text"]


async def test_unlinking_an_org_the_channel_does_not_follow_changes_nothing(light) -> None:
    await links.unlink(light.invocation(), Unlink(ORG))
    assert "is not linked to this channel" in light.replies[-1]["text"]
    assert light.posted() == []


async def test_a_threshold_in_an_unlinked_channel_is_refused(light) -> None:
    with pytest.raises(Refusal, match="not linked"):
        await settings.threshold(light.invocation(), Threshold(500_000))


async def test_a_threshold_is_stored_and_announced_to_the_channel(light) -> None:
    light.link(ORG)
    await settings.threshold(light.invocation(), Threshold(500_000))
    [post] = light.posted()
    assert "$5,000.00" in str(post) and post["channel"] == "C1"
