"""Metric labels: which outbox keys count as alerts or digests."""

from __future__ import annotations

import pytest

from bot.runtime.metrics import outbox_kind


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
