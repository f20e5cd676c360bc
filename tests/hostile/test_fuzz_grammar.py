"""`handlers.subcommands.parse` on hostile text: a command or a UsageError, never anything else, and
every ID it lets through is exactly 24 lowercase hex digits."""

from __future__ import annotations

import re
import unicodedata
from datetime import date, time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from handlers import grammar, subcommands
from tests.hostile.strategies import command_texts

HEX24 = re.compile(r"[a-f0-9]{24}")
USER = re.compile(r"[UW][A-Z0-9]{2,19}")
GROUP = re.compile(r"S[A-Z0-9]{2,19}")
REQUIRED_IDS = {
    grammar.Link: ("org_id",),
    grammar.Connect: ("org_id",),
    grammar.Unlink: ("org_id",),
    grammar.Invoice: ("invoice_id",),
}

# Pure and fast: the 10,000 examples, the same ones on every run.
FUZZ = settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

texts = st.one_of(
    command_texts(),
    # Every code point, lone surrogates included: `parse` takes any str.
    command_texts(alphabet=st.characters(codec=None, exclude_categories=())),
)
todays = st.one_of(
    st.none(),
    st.dates(),
    st.dates(date(2023, 1, 1), date(2028, 12, 31)),
    st.sampled_from([date.min, date.max]),
)


def check_command(command: grammar.Command) -> None:
    """What a handler may rely on, field by field."""
    assert isinstance(command, grammar.Command.__args__), command
    for name in ("org_id", "invoice_id"):
        value = getattr(command, name, None)
        if value is not None or name in REQUIRED_IDS.get(type(command), ()):
            assert isinstance(value, str) and HEX24.fullmatch(value), command
    match command:
        case grammar.Help(topic=topic):
            assert topic is None or topic in subcommands.NAMES
        case grammar.Costs(start=start, end=end, group_by=group_by):
            assert start.day == 1 and end.day == 1 and start < end
            months = (end.year - start.year) * 12 + end.month - start.month
            assert months <= grammar.MAX_SPAN_MONTHS
            assert group_by is None or group_by in grammar.GROUP_BY
        case grammar.Threshold(amount_cents=cents):
            assert cents is None or (
                type(cents) is int and 0 < cents <= grammar.MAX_THRESHOLD_CENTS
            )
        case grammar.OnCall(kind=kind, id=ident):
            assert (kind, ident) == (None, None) or (
                (kind == "user" and ident is not None and USER.fullmatch(ident))
                or (kind == "usergroup" and ident is not None and GROUP.fullmatch(ident))
            )
        case grammar.Digest(action=action, day=day, time=at):
            assert action in ("on", "off", "now")
            if action == "on":
                assert day == "last" or (type(day) is int and 1 <= day <= 31)
                assert isinstance(at, time) and at.tzinfo is None
            else:
                assert day is None and at is None


def check_usage_error(error: grammar.UsageError) -> None:
    message = str(error)
    assert isinstance(message, str) and message.strip()
    # The user's words come back without the characters that were refused.
    odd = [c for c in message if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t\r"]
    assert not odd, f"{odd[:3]!r} in the reply to a command"


@FUZZ
@given(text=texts, today=todays)
def test_parse_returns_a_command_or_raises_usage_error(text, today):
    try:
        command = subcommands.parse(text, today=today)
    except grammar.UsageError as error:
        event("UsageError")
        check_usage_error(error)
    else:
        event(type(command).__name__)
        check_command(command)


def test_known_path_tricks_are_usage_errors():
    org = "5f1a2b3c4d5e6f7a8b9c0d1e"
    for text in (
        f"link ../{org}",
        f"link {org}/..",
        f"link {org[:-2]}%2F",
        f"link ..%2f{org[4:]}",
        f"pending {org}\x00",
        f"pending {org[:12]}\u200b{org[12:]}",
        f"invoice {org}/csv",
        f"invoice {org} {org}?envelope=true",
        f"invoice {org.upper()}",
        "invoice " + "\uff10" * 24,
        "invoice " + "\U0001d7d8" * 24,
        f"unlink {org}\u202e",
        f"costs 2024-01 2024-02 {org}#x",
    ):
        try:
            command = subcommands.parse(text)
        except grammar.UsageError:
            continue
        raise AssertionError(f"{text!r} parsed as {command!r}")


@pytest.mark.parametrize(
    "text",
    [
        "threshold " + "x" * 1990,
        "threshold " + "1" * 1990,
        "threshold " + "\U000e0080" * 1990,  # unassigned: repr() writes 10 characters for each
    ],
    ids=["letters", "digits", "unassigned"],
)
def test_usage_errors_quote_the_input_cut_short(text):
    # Every other error quotes at most three tokens of 40 characters (_show, _extra).
    with pytest.raises(grammar.UsageError) as caught:
        subcommands.parse(text)
    assert len(str(caught.value)) <= 600, len(str(caught.value))
