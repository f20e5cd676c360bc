"""Tests of the pure `/atlas-billing` grammar."""

from __future__ import annotations

from datetime import date, time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.grammar import (
    MAX_TEXT,
    Command,
    Connect,
    Costs,
    Digest,
    Help,
    Invoice,
    Link,
    OnCall,
    Pending,
    Status,
    Threshold,
    Unlink,
    UsageError,
    Who,
)
from handlers.subcommands import (
    NAMES,
    SUBCOMMANDS,
    help_text,
    needs_admin,
    parse,
    usage_lines,
    who_may_run,
)

ORG = "5f1a2b3c4d5e6f7a8b9c0d1e"
INV = "65aa00bb11cc22dd33ee44ff"
TODAY = date(2024, 6, 15)
COSTS_USAGE = "costs START END [by services|projects|clusters|organizations] [ORG_ID]"


def usage_error(text: str, **kwargs) -> UsageError:
    with pytest.raises(UsageError) as caught:
        parse(text, **kwargs)
    return caught.value


# ---- good forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Help()),
        ("   \t\n ", Help()),
        ("help", Help()),
        ("HELP", Help()),
        ("help costs", Help("costs")),
        ("help Digest", Help("digest")),
        (f"link {ORG}", Link(ORG)),
        (f"  Link   {ORG}  ", Link(ORG)),
        (f"connect {ORG}", Connect(ORG)),
        (f"unlink {ORG}", Unlink(ORG)),
        ("status", Status()),
        ("pending", Pending()),
        (f"pending {ORG}", Pending(ORG)),
        (f"invoice {INV}", Invoice(INV)),
        (f"invoice {INV} {ORG}", Invoice(INV, ORG)),
        ("threshold 5000", Threshold(500_000)),
        ("threshold $5,000", Threshold(500_000)),
        ("threshold 5000.50", Threshold(500_050)),
        (f"threshold 5000 {ORG}", Threshold(500_000, ORG)),
        ("threshold 100000000", Threshold(10_000_000_000)),
        ("threshold 0.01", Threshold(1)),
        ("threshold off", Threshold(None)),
        (f"threshold OFF {ORG}", Threshold(None, ORG)),
        ("oncall <@U123ABC|alice>", OnCall("user", "U123ABC")),
        ("oncall <@U123ABC>", OnCall("user", "U123ABC")),
        ("oncall <@U123ABC|alice smith>", OnCall("user", "U123ABC")),
        ("oncall <@W0123456789>", OnCall("user", "W0123456789")),
        ("oncall <!subteam^S123ABC|@oncall>", OnCall("usergroup", "S123ABC")),
        ("oncall <!subteam^S123ABC>", OnCall("usergroup", "S123ABC")),
        ("oncall U123ABC", OnCall("user", "U123ABC")),
        ("oncall W123ABC", OnCall("user", "W123ABC")),
        ("oncall S123ABC", OnCall("usergroup", "S123ABC")),
        ("oncall off", OnCall(None, None)),
        ("digest on", Digest("on", day=1, time=time(9, 0))),
        ("digest on 15", Digest("on", day=15, time=time(9, 0))),
        ("digest on 31 23:59", Digest("on", day=31, time=time(23, 59))),
        ("digest on last", Digest("on", day="last", time=time(9, 0))),
        ("digest on LAST 00:00", Digest("on", day="last", time=time(0, 0))),
        ("digest on 18:30", Digest("on", day=1, time=time(18, 30))),
        ("digest on 7:05 3", Digest("on", day=3, time=time(7, 5))),
        ("digest off", Digest("off")),
        ("digest now", Digest("now")),
        (f"digest now {ORG}", Digest("now", org_id=ORG)),
    ],
)
def test_good_forms(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("costs 2024-01 2024-04", Costs(date(2024, 1, 1), date(2024, 4, 1))),
        ("costs 2024-01-01 2024-04-01", Costs(date(2024, 1, 1), date(2024, 4, 1))),
        ("costs 2023-07 2024-07", Costs(date(2023, 7, 1), date(2024, 7, 1))),
        (
            "costs 2024-01 2024-02 by services",
            Costs(date(2024, 1, 1), date(2024, 2, 1), "services"),
        ),
        (
            "costs 2024-01 2024-02 BY Projects",
            Costs(date(2024, 1, 1), date(2024, 2, 1), "projects"),
        ),
        (
            f"costs 2024-01 2024-02 by clusters {ORG}",
            Costs(date(2024, 1, 1), date(2024, 2, 1), "clusters", ORG),
        ),
        (
            f"costs 2024-01 2024-02 {ORG} by organizations",
            Costs(date(2024, 1, 1), date(2024, 2, 1), "organizations", ORG),
        ),
        (f"costs 2024-01 2024-02 {ORG}", Costs(date(2024, 1, 1), date(2024, 2, 1), None, ORG)),
        ("costs 2023-12 2024-01", Costs(date(2023, 12, 1), date(2024, 1, 1))),
    ],
)
def test_costs_good_forms(text: str, expected: Costs) -> None:
    assert parse(text) == expected
    assert parse(text, today=TODAY) == expected


def test_costs_window_edges_relative_to_today() -> None:
    # END may be the first of next month (this month included); START may be 24 months back.
    this_month = parse("costs 2024-06 2024-07", today=TODAY)
    assert isinstance(this_month, Costs)
    assert this_month.end == date(2024, 7, 1)
    two_years_back = parse("costs 2022-06 2022-07", today=TODAY)
    assert isinstance(two_years_back, Costs)
    assert two_years_back.start == date(2022, 6, 1)
    # Without a `today` the window is not checked at all.
    assert parse("costs 2030-01 2030-02") == Costs(date(2030, 1, 1), date(2030, 2, 1))


# ---- bad input ------------------------------------------------------------------------------


def test_unknown_subcommand_suggests_the_closest() -> None:
    error = usage_error("pendng")
    assert "Unknown sub-command 'pendng'" in str(error)
    assert "Did you mean `pending`?" in str(error)
    for name in NAMES:
        assert name in str(error)


def test_unknown_subcommand_without_a_close_match() -> None:
    error = usage_error("xyzzy")
    assert "Did you mean" not in str(error)
    assert "help, link, connect" in str(error)


def test_help_about_an_unknown_subcommand() -> None:
    assert "Unknown sub-command 'cost'" in str(usage_error("help cost"))
    assert "Usage: help [SUB-COMMAND]" in str(usage_error("help costs pending"))


@pytest.mark.parametrize(
    ("text", "usage"),
    [
        ("link", "link ORG_ID"),
        (f"link {ORG} {ORG}", "link ORG_ID"),
        ("connect", "connect ORG_ID"),
        (f"unlink {ORG} extra", "unlink ORG_ID"),
        ("status now", "status"),
        (f"pending {ORG} {ORG}", "pending [ORG_ID]"),
        ("invoice", "invoice INVOICE_ID [ORG_ID]"),
        (f"invoice {INV} {ORG} more", "invoice INVOICE_ID [ORG_ID]"),
        ("costs", COSTS_USAGE),
        ("costs 2024-01", COSTS_USAGE),
        (f"costs 2024-01 2024-02 {ORG} {ORG}", COSTS_USAGE),
        ("threshold", "threshold AMOUNT [ORG_ID] / threshold off [ORG_ID]"),
        (f"threshold 5 {ORG} x", "threshold AMOUNT [ORG_ID] / threshold off [ORG_ID]"),
        ("oncall", "oncall @user|@usergroup / oncall off"),
        ("oncall <@U123ABC> <@U456DEF>", "oncall @user|@usergroup / oncall off"),
        ("digest", "digest on [DAY] [HH:MM] / digest off / digest now [ORG_ID]"),
        ("digest sometimes", "digest on [DAY] [HH:MM] / digest off / digest now [ORG_ID]"),
        ("digest off 5", "digest off"),
        (f"digest now {ORG} {ORG}", "digest now [ORG_ID]"),
        ("digest on 5 6", "digest on [DAY] [HH:MM]"),
        ("digest on 09:00 10:00", "digest on [DAY] [HH:MM]"),
    ],
)
def test_missing_or_extra_arguments_show_the_usage(text: str, usage: str) -> None:
    error = usage_error(text)
    assert error.usage == usage
    assert str(error).endswith(f"Usage: {usage}")


def test_an_id_split_by_blanks_is_named_as_such() -> None:
    assert "blanks" in str(usage_error(f"link {ORG[:12]} {ORG[12:]}"))


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("5f1a2b3c4d5e/f7a8b9c0d1e", "'/'"),
        ("../5f1a2b3c4d5e6f7a8b9c0d", "'.'"),
        ("..", "'.'"),
        ("5f1a2b3c%2F5e6f7a8b9c0d1e", "'%'"),
        ("5F1A2B3C4D5E6F7A8B9C0D1E", "lowercase"),
        ("5f1a2b3c4d5e6f7a8b9c0d1E", "lowercase"),
        ("5f1a2b3c4d5e6f7a8b9c0d1", "23 digits"),
        ("5f1a2b3c4d5e6f7a8b9c0d1e0", "25 digits"),
        ("٥f1a2b3c4d5e6f7a8b9c0d1e", "ASCII"),  # an Arabic-Indic five
        ("5f1a2b3c4d5e6f7a8b9c0d1ｅ", "ASCII"),  # a fullwidth e
        ("zzzzzzzzzzzzzzzzzzzzzzzz", "24 lowercase hex digits"),
    ],
)
@pytest.mark.parametrize("template", ["link {}", "connect {}", "pending {}", "invoice {}"])
def test_bad_ids_are_refused(bad: str, hint: str, template: str) -> None:
    error = usage_error(template.format(bad))
    assert hint in str(error)
    assert "24 lowercase hex digits" in str(error)
    assert "Usage:" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        f"invoice {INV} ../{ORG}",
        f"costs 2024-01 2024-02 {ORG.upper()}",
        f"threshold 5 {ORG[:-1]}",
        f"digest now {ORG}%2F",
    ],
)
def test_optional_org_ids_are_checked_too(text: str) -> None:
    assert "organization ID" in str(usage_error(text))


def test_a_space_inside_an_id_is_not_an_id() -> None:
    error = usage_error(f"invoice {INV[:10]} {INV[10:]}")
    assert "invoice ID" in str(error)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("costs 2024-02-15 2024-03", "'2024-02-15' is not a first of month. Usage: " + COSTS_USAGE),
        ("costs 2024-01 2024-03-02", "'2024-03-02' is not a first of month."),
        ("costs 2024-02-30 2024-03", "is not a valid date"),
        ("costs 2024-13 2025-01", "is not a valid month"),
        ("costs 2024-00 2024-02", "is not a valid month"),
        ("costs 2024/01 2024/02", "is not a month like 2024-01"),
        ("costs jan feb", "is not a month like 2024-01"),
        ("costs 2024-1 2024-2", "is not a month like 2024-01"),
        ("costs ２０２４-01 2024-02", "is not a month like 2024-01"),  # fullwidth digits
        ("costs 2024-03 2024-01", "must be after START"),
        ("costs 2024-03 2024-03", "must be after START"),
        ("costs 2023-01 2024-02", "spans 13 months; a query may span at most 12"),
        ("costs 2024-01 2024-02 by service", "Cannot group by 'service'"),
        ("costs 2024-01 2024-02 by", "`by` needs one of services"),
        ("costs 2024-01 2024-02 services", "Write `by services`"),
        ("costs 2024-01 2024-02 by projects by clusters", "only once"),
    ],
)
def test_bad_costs(text: str, message: str) -> None:
    error = usage_error(text)
    assert message in str(error)
    assert error.usage == COSTS_USAGE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "costs 2024-06 2024-08",
            "END (2024-08-01) is in the future; the latest END is 2024-07-01",
        ),
        ("costs 2025-01 2025-02", "is in the future"),
        ("costs 2022-05 2022-07", "more than 24 months ago; Cost Explorer goes back to 2022-06-01"),
    ],
)
def test_costs_outside_the_window_of_today(text: str, message: str) -> None:
    assert message in str(usage_error(text, today=TODAY))
    parse(text)  # the same text is fine when no `today` is given


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("threshold lots", "is not an amount like 5000"),
        ("threshold 5k", "is not an amount like 5000"),
        ("threshold 1,00", "is not an amount like 5000"),
        ("threshold 0", "more than $0.00"),
        ("threshold $0.00", "more than $0.00"),
        ("threshold -5", "more than $0.00, got -$5.00"),
        ("threshold (12.00)", "more than $0.00"),
        ("threshold 5000.505", "more than two decimals"),
        ("threshold 100000000.01", "at most $100,000,000.00"),
        ("threshold ５０００", "is not an amount"),  # fullwidth digits
    ],
)
def test_bad_amounts(text: str, message: str) -> None:
    error = usage_error(text)
    assert message in str(error)
    assert error.usage == "threshold AMOUNT [ORG_ID] / threshold off [ORG_ID]"


@pytest.mark.parametrize(
    "target",
    [
        "bob",
        "@bob",
        "u123abc",
        "<@U1>",
        "<@u123abc>",
        "<#C123ABC|general>",
        "<!channel>",
        "<!here>",
        "<!subteam^U123ABC>",
        "X123ABC",
        "U" + "A" * 20,
        "<@U123ABC",
    ],
)
def test_bad_oncall_targets(target: str) -> None:
    assert "is not a Slack user or user group" in str(usage_error(f"oncall {target}"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("digest on 0", "'0' is not a DAY; use 1 to 31, or `last`"),
        ("digest on 32", "'32' is not a DAY"),
        ("digest on -1", "'-1' is not a DAY"),
        ("digest on first", "'first' is not a DAY"),
        ("digest on 24:00", "'24:00' is not a time of day"),
        ("digest on 12:60", "'12:60' is not a time of day"),
        ("digest on 9:5", "'9:5' is not a time like 09:00"),
        ("digest on 09:00:00", "is not a time like 09:00"),
        ("digest on 9am", "'9am' is not a DAY"),
    ],
)
def test_bad_digest_schedules(text: str, message: str) -> None:
    error = usage_error(text)
    assert message in str(error)
    assert error.usage == "digest on [DAY] [HH:MM]"


def test_too_long_text_is_refused_before_parsing() -> None:
    assert "too long" in str(usage_error("status " + "x" * MAX_TEXT))
    assert "too long" in str(usage_error("\x00" * (MAX_TEXT + 1)))
    parse("status" + " " * (MAX_TEXT - len("status")))  # exactly at the limit is fine


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x85", "\u200b", "\u202e"])
def test_control_characters_are_refused(char: str) -> None:
    assert "control character" in str(usage_error(f"link {char}{ORG}"))


def test_tabs_and_newlines_separate_tokens() -> None:
    assert parse(f"invoice\t{INV}\n{ORG}\r\n") == Invoice(INV, ORG)


# ---- the table ------------------------------------------------------------------------------


def test_every_usage_line_is_in_the_help_text() -> None:
    text = help_text()
    for line in usage_lines():
        assert line in text
    # One line per sub-command, plus a header and a footnote.
    assert len(text.splitlines()) == len(SUBCOMMANDS) + 2


def test_help_about_one_subcommand() -> None:
    text = help_text("digest")
    assert text.count("\n") == 0
    assert "digest on [DAY] [HH:MM]" in text
    assert "`digest now`: anyone in a linked channel" in text


def test_usage_lines_cover_every_subcommand() -> None:
    lines = usage_lines()
    for name in NAMES:
        assert any(line.split()[0] == name for line in lines)
    assert COSTS_USAGE in lines


@pytest.mark.parametrize(
    ("text", "who"),
    [
        ("help", Who.ANYONE),
        ("status", Who.ANYONE),
        (f"link {ORG}", Who.ADMINS),
        (f"connect {ORG}", Who.ADMINS),
        (f"unlink {ORG}", Who.ADMINS),
        ("pending", Who.LINKED),
        (f"invoice {INV}", Who.LINKED),
        ("costs 2024-01 2024-02", Who.LINKED),
        ("threshold 5", Who.ADMINS),
        ("threshold off", Who.ADMINS),
        ("oncall U123ABC", Who.ADMINS),
        ("oncall off", Who.ADMINS),
        ("digest on", Who.ADMINS),
        ("digest off", Who.ADMINS),
        ("digest now", Who.LINKED),
    ],
)
def test_who_may_run_each_form(text: str, who: Who) -> None:
    command = parse(text)
    assert who_may_run(command) is who
    assert needs_admin(command) is (who is Who.ADMINS)


def test_admin_only_types_fail_closed() -> None:
    admin_only = {
        form.command for sub in SUBCOMMANDS for form in sub.forms if form.who is Who.ADMINS
    }
    assert {Link, Connect, Unlink, Threshold, OnCall, Digest} == admin_only
    # Forms of one type that are not told apart by an action must agree on who may run them.
    for sub in SUBCOMMANDS:
        plain = {form.who for form in sub.forms if form.action is None}
        assert len(plain) <= 1, sub.name


# ---- property ---------------------------------------------------------------------------------

_WORDS = st.sampled_from(
    [*NAMES, "by", "services", "off", "on", "now", "last", ORG, INV, "2024-01", "2024-02-01"]
)


@given(
    st.one_of(st.text(max_size=300), st.lists(_WORDS | st.text(max_size=12)).map(" ".join)),
    st.one_of(st.just(TODAY), st.dates()),
)
def test_parse_returns_a_command_or_raises_usage_error(text: str, today: date) -> None:
    try:
        result = parse(text, today=today)
    except UsageError as error:
        assert str(error)
    else:
        assert who_may_run(result) in Who
