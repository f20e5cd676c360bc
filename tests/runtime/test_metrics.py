"""Metric labels: which outbox keys count as alerts or digests, and Slack errors by name."""

from __future__ import annotations

import pytest

from bot.runtime.metrics import outbox_kind, slack_error_label


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("alert:12:2027-03:100", "alert"),
        ("digest:12:2027-02", "digest"),
        ("digest-now:C1:1700000000.0001", "digest"),
        ("digest:12:2027-02:failed", None),  # the failure notice: no digest was posted
        ("costquery:abc", None),
        ("", None),
    ],
)
def test_outbox_keys_are_counted_by_what_they_post(key, kind):
    assert outbox_kind(key) == kind


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
