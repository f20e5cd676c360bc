"""The bot's Slack client: failed calls are labelled by Slack's word or the status class."""

from __future__ import annotations

import aiohttp
import pytest
from slack_sdk.http_retry import HttpRequest, RetryState

from bot.core.config import Settings
from bot.slack.client import SafeConnectionErrorRetryHandler, slack_client, slack_error_label
from tests.fakes.slack import FakeSlack


@pytest.mark.parametrize(
    ("error", "status", "label"),
    [
        ("channel_not_found", 200, "channel_not_found"),
        ("ratelimited", 429, "ratelimited"),
        (None, 503, "http_5xx"),
        ("<script>", 400, "http_4xx"),  # not Slack's word: never a label of its own
        ({"nested": 1}, 500, "http_5xx"),
    ],
)
def test_slack_errors_are_labelled_by_slacks_word_or_the_status_class(error, status, label):
    assert slack_error_label(error, status) == label


# ---- connection errors: retry only what surely did not arrive, or may repeat ---------------------


def _client(fake: FakeSlack):
    settings = Settings(_env_file=None, SLACK_API_URL=fake.base_url, SLACK_BOT_TOKEN="xoxb-test")
    return slack_client(settings)


async def test_a_post_whose_answer_is_lost_is_not_sent_again(fake_slack: FakeSlack) -> None:
    """Slack took the post, then the connection dropped: slack_sdk's own connection-error
    handler would post it again (the alert appeared twice); ours leaves it to the caller."""
    fake_slack.fail_next("chat.postMessage", status=0, applied=True)
    client = _client(fake_slack)
    with pytest.raises(aiohttp.ClientError):
        await client.chat_postMessage(channel="C_LINKED", text="threshold crossed")
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert len(fake_slack.messages("C_LINKED")) == 1


async def test_a_read_whose_answer_is_lost_is_asked_again(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("users.info", status=0)
    client = _client(fake_slack)
    answer = await client.users_info(user="U_ADMIN")
    assert answer["user"]["id"] == "U_ADMIN"
    assert len(fake_slack.calls_to("users.info")) == 2


async def test_a_post_that_never_connected_is_retried(fake_slack: FakeSlack) -> None:
    """A refused connection never reached Slack: sending it again cannot repeat anything."""
    handler = SafeConnectionErrorRetryHandler(max_retry_count=1)
    request = HttpRequest(method="POST", url=f"{fake_slack.base_url}chat.postMessage", headers={})
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 1, False, True, None, None, None),
        OSError(111, "Connection refused"),
    )
    state = RetryState()
    assert await handler.can_retry_async(state=state, request=request, error=refused)
    dropped = aiohttp.ServerDisconnectedError()
    assert not await handler.can_retry_async(state=state, request=request, error=dropped)
