"""Threshold alerts: headline per level, mention first, buttons, and their updated forms."""

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from bot.render.alerts import (
    LEVEL_LABELS,
    LEVELS,
    acknowledged_message,
    alert_message,
    percent_of,
    snoozed_message,
)
from bot.render.terminal import blocks_to_text

ORG = "5f0c0c0c0c0c0c0c0c0c0c0c"


def _alert(**overrides):
    values = {
        "alert_id": 42,
        "org_id": ORG,
        "period": "2026-11",
        "level": "80",
        "amount_cents": 4_100_00,
        "threshold_cents": 5_000_00,
        "forecast_cents": 6_000_00,
        "top_projects": tuple((f"project-{i}", 1000_00 - i) for i in range(7)),
        "oncall": "<@U123>",
    }
    values.update(overrides)
    return alert_message(**values)


def _headline(message) -> str:
    return message.blocks[0]["text"]["text"]


def _fields(message) -> list[str]:
    return [f["text"] for f in message.blocks[0]["fields"]]


def _actions(blocks) -> list[dict]:
    return [b for b in blocks if b["type"] == "actions"]


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("50", f":warning: *Atlas spend for org `{ORG}` reached 50% of its $5,000.00 threshold*"),
        (
            "80",
            f":rotating_light: *Atlas spend for org `{ORG}` reached 80% of its $5,000.00 threshold*",
        ),
        ("100", f":fire: *Atlas spend for org `{ORG}` reached its $5,000.00 threshold*"),
        (
            "forecast",
            f":chart_with_upwards_trend: *Atlas spend for org `{ORG}` is forecast to pass"
            " its $5,000.00 threshold this month*",
        ),
    ],
)
def test_every_level_has_its_headline(level, expected):
    message = _alert(level=level, oncall=None)
    assert _headline(message) == expected
    assert level in LEVELS and LEVEL_LABELS[level]


def test_levels_and_their_labels():
    assert LEVELS == ("50", "80", "100", "forecast")
    assert LEVEL_LABELS["100"] == "the threshold"
    assert LEVEL_LABELS["forecast"] == "forecast over the threshold"


def test_unknown_level_or_period_is_refused():
    with pytest.raises(ValueError, match="unknown alert level"):
        _alert(level="90")
    with pytest.raises(ValueError, match="2026-11"):
        _alert(period="2026-13")


def test_the_oncall_mention_comes_first_so_it_notifies():
    user = _alert(oncall="<@U123>")
    assert _headline(user).startswith("<@U123> :rotating_light: ")
    assert user.text.startswith("<@U123> Atlas spend for org")
    group = _alert(oncall="<!subteam^S123>")
    assert _headline(group).startswith("<!subteam^S123> ")
    nobody = _alert(oncall=None)
    assert _headline(nobody).startswith(":rotating_light: ")
    assert "<@" not in json.dumps(nobody.blocks)


def test_fields_amounts_percent_and_forecast():
    fields = _fields(_alert())
    assert fields == [
        "*Month to date (November 2026)*\n$4,100.00",
        "*Threshold*\n$5,000.00",
        "*Of the threshold*\n82.0%",
        "*Month-end forecast*\n$6,000.00 (120.0% of the threshold)",
    ]
    message = _alert()
    assert message.text == (
        f"<@U123> Atlas spend for org `{ORG}` reached 80% of its $5,000.00 threshold:"
        " $4,100.00 so far (82.0%)"
    )


def test_projects_driving_the_spend_are_ranked_top_five():
    projects = _alert(top_projects=(("b<x>", 300), ("a", 500), *((f"p{i}", 1) for i in range(5))))
    text = projects.blocks[1]["text"]["text"]
    lines = text.splitlines()
    assert lines[0] == "*Projects driving the spend*"
    assert lines[1] == "• b&lt;x&gt; — $3.00"  # the caller's order, names escaped
    assert lines[-1] == "… and 2 more ($0.02)"
    assert len(lines) == 7
    assert "_none_" in _alert(top_projects=()).blocks[1]["text"]["text"]


def test_other_levels_crossed_in_the_same_run_are_named():
    context = json.dumps(
        _alert(level="100", also_crossed=("50", "80", "100")).blocks, ensure_ascii=False
    )
    assert "also crossed in this check: 50% of the threshold, 80% of the threshold" in context
    assert "Alert #42 · billing period 2026-11" in context
    assert "also crossed" not in json.dumps(_alert().blocks)


def test_acknowledge_and_snooze_buttons_carry_the_alert_id():
    (actions,) = _actions(_alert().blocks)
    ack, snooze = actions["elements"]
    assert ack["type"] == "button" and snooze["type"] == "button"
    assert (ack["action_id"], ack["value"], ack["style"]) == ("alert_ack", "42", "primary")
    assert ack["text"]["text"] == "Acknowledge"
    assert (snooze["action_id"], snooze["value"]) == ("alert_snooze", "42")
    assert snooze["text"]["text"] == "Snooze 24 h"
    assert "style" not in snooze
    assert "[Acknowledge]  [Snooze 24 h]" in blocks_to_text(_alert().blocks)


@pytest.mark.parametrize(
    ("amount", "threshold", "expected"),
    [
        (4_100_00, 5_000_00, "82.0"),
        (1, 3, "33.3"),
        (2, 3, "66.7"),
        (1, 8, "12.5"),
        (1, 16, "6.2"),  # 6.25: half to even
        (3, 16, "18.8"),  # 18.75: half to even
        (0, 100, "0.0"),
        (-50, 100, "-50.0"),
        (12_345_678_90, 5_000_00, "246913.6"),
    ],
)
def test_percent_of_is_one_decimal_half_even(amount, threshold, expected):
    assert percent_of(amount, threshold) == Decimal(expected)
    assert str(percent_of(amount, threshold)) == expected


def test_percent_of_a_zero_threshold_is_refused():
    with pytest.raises(ValueError, match="positive"):
        percent_of(1, 0)


def test_big_percentages_get_thousands_separators():
    fields = _fields(_alert(amount_cents=500_000_00, level="100"))
    assert "*Of the threshold*\n10,000.0%" in fields


def test_acknowledged_replaces_the_buttons_and_keeps_the_rest():
    original = _alert().blocks
    at = datetime(2026, 11, 23, 15, 5, tzinfo=timezone(timedelta(hours=1)))
    message = acknowledged_message(original, user_id="U777", at=at)
    assert _actions(message.blocks) == []
    assert message.blocks[:-1] == original[:-1]
    status = message.blocks[-1]
    assert status["type"] == "context"
    assert status["elements"][0]["text"] == "✅ Acknowledged by <@U777> at 2026-11-23 14:05 UTC"
    assert message.text == (
        f"Atlas spend for org `{ORG}` reached 80% of its $5,000.00 threshold (acknowledged)"
    )
    assert original == _alert().blocks  # the input is not changed in place


def test_snoozed_keeps_an_acknowledge_button_and_can_then_be_acknowledged():
    original = _alert().blocks
    until = datetime(2026, 11, 24, 14, 5, tzinfo=UTC)
    snoozed = snoozed_message(original, user_id="U9", until=until)
    assert snoozed.blocks[:-2] == original[:-1]
    status, actions = snoozed.blocks[-2:]
    assert status["elements"][0]["text"] == (
        "😴 Snoozed by <@U9> until 2026-11-24 14:05 UTC; new alerts for this org wait until then"
    )
    (ack,) = actions["elements"]
    assert (ack["action_id"], ack["value"]) == ("alert_ack", "42")
    assert snoozed.text.endswith("threshold (snoozed)")

    done = acknowledged_message(snoozed.blocks, user_id="U1", at=until.replace(tzinfo=None))
    assert _actions(done.blocks) == []
    assert done.blocks[:-1] == snoozed.blocks[:-1]  # the snooze line stays as history
    assert done.blocks[-1]["elements"][0]["text"].endswith("<@U1> at 2026-11-24 14:05 UTC")


def test_updates_work_on_blocks_as_slack_sends_them_back():
    # Slack echoes blocks with its own ids and extra keys; the actions block is found by its buttons.
    echoed = json.loads(json.dumps(_alert().blocks))
    for i, block in enumerate(echoed):
        block["block_id"] = f"x{i}"
    echoed[0]["text"]["verbatim"] = False
    message = acknowledged_message(echoed, user_id="U1", at=datetime(2026, 1, 1, tzinfo=UTC))
    assert [b["type"] for b in message.blocks] == ["section", "section", "context", "context"]
    assert message.blocks[0] == echoed[0]
    assert message.text.startswith(f"Atlas spend for org `{ORG}` reached 80%")
    assert acknowledged_message([], user_id="U1", at=datetime(2026, 1, 1)).text == (
        "Atlas spend alert (acknowledged)"
    )
