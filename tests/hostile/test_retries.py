"""Slack's retries (``X-Slack-Retry-Num`` ≥ 1) of a request already taken are acknowledged and
dropped: one answer, one Atlas call, however often Slack resends."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.app.conftest import CHANNEL
from tests.fakes.slack import block_action


@pytest.fixture
def org(sandbox):
    return sandbox.data.org(sandbox.data.org_ids[0])


def resend(bot, form: dict[str, str], number: int, reason: str = "http_timeout") -> httpx.Request:
    """The identical body, signed again a moment later, with Slack's retry headers."""
    request = bot.driver.request(form, timestamp=int(time.time()) + number)
    request.headers["X-Slack-Retry-Num"] = str(number)
    request.headers["X-Slack-Retry-Reason"] = reason
    return request


def dropped(response: httpx.Response) -> bool:
    # Bolt never sets this header: the server layer answered without dispatching.
    return (
        response.status_code == 200
        and response.content == b""
        and response.headers.get("X-Slack-No-Retry") == "1"
    )


def pending_calls(bot) -> int:
    return [r.operation for r in bot.atlas_requests()].count("listInvoicePending")


async def test_a_retried_command_is_processed_once(bot, org):
    bot.link(org.id)
    form = bot.driver.command_body("pending")
    first = await bot.driver.send(bot.driver.request(form))
    assert first.status_code == 200
    await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    for number, reason in ((1, "http_timeout"), (2, "http_error"), (3, "too_many_requests")):
        assert dropped(await bot.driver.send(resend(bot, form, number, reason)))
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    assert pending_calls(bot) == 1
    # A new command (a new trigger_id and response_url, so a new body) is not a retry.
    await bot.command("pending")
    await bot.fake.wait_for_async(lambda: len(bot.fake.calls_to("chat.postMessage")) == 2)


async def test_a_retry_while_the_first_is_still_being_worked_on_is_dropped(bot, org):
    bot.link(org.id)
    bot.fake.delay("chat.postMessage", 1.0, times=1)  # the work is slow to finish
    form = bot.driver.command_body("pending")
    assert (await bot.driver.send(bot.driver.request(form))).status_code == 200
    assert dropped(await bot.driver.send(resend(bot, form, 1)))
    await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    assert pending_calls(bot) == 1


async def test_a_retry_of_a_request_never_seen_here_is_processed(bot, org):
    # The first delivery was lost, or went to another replica: this one does the work.
    bot.link(org.id)
    form = bot.driver.command_body("pending")
    response = await bot.driver.send(resend(bot, form, 1))
    assert response.status_code == 200 and "X-Slack-No-Retry" not in response.headers
    await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    assert dropped(await bot.driver.send(resend(bot, form, 2)))
    assert pending_calls(bot) == 1


async def test_a_retried_button_click_is_processed_once(bot, org):
    bot.link(org.id)
    click = block_action(
        "alert_ack",
        "999999",
        channel_id=CHANNEL,
        message_ts="1700000000.000100",
        response_url=bot.fake.response_url("click"),
    )
    request = bot.driver.action_request(click)
    assert (await bot.driver.send(request)).status_code == 200
    await bot.fake.wait_for_async(lambda: bot.fake.responses)
    retry = bot.driver.action_request(click, timestamp=int(time.time()) + 1)
    retry.headers["X-Slack-Retry-Num"] = "1"
    assert retry.content == request.content
    assert dropped(await bot.driver.send(retry))
    assert [r.body["text"] for r in bot.fake.responses] == [
        "This alert is not known here any more."
    ]


async def test_a_replayed_request_without_retry_headers_is_dropped_too(bot, org):
    # Someone who captured a signed request resends it, re-signed within the five minutes
    # or not, without Slack's (unsigned) retry header: still processed once.
    bot.link(org.id)
    form = bot.driver.command_body("pending")
    assert (await bot.driver.send(bot.driver.request(form))).status_code == 200
    await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    replay = bot.driver.request(form, timestamp=int(time.time()) + 2)
    assert "X-Slack-Retry-Num" not in replay.headers
    assert dropped(await bot.driver.send(replay))
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    assert pending_calls(bot) == 1
