"""The bot's Slack client: failed calls are labelled by Slack's word or the status class."""

from __future__ import annotations

import pytest

from bot.slack.client import slack_error_label


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
