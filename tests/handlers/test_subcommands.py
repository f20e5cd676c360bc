"""The sub-command table: each row's parts agree with each other, and everything derived from the
table (help, permissions, metric labels) follows it."""

from __future__ import annotations

import inspect

import pytest

from bot.core.schedule import DEFAULT_DAY, DEFAULT_TIME
from handlers.grammar import Digest
from handlers.subcommands import (
    NAMES,
    SUBCOMMANDS,
    SubCommand,
    help_text,
    label_of,
    parse,
    subcommand_of,
)


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda sub: sub.name)
def test_each_row_has_a_documented_handler_and_forms_of_its_own(sub: SubCommand) -> None:
    if sub.name == "help":
        assert sub.handler is None  # answered in the acknowledgement
    else:
        assert inspect.iscoroutinefunction(sub.handler), sub.name
        assert inspect.getdoc(sub.handler), f"{sub.name}: its docstring is its help"
    assert sub.description and sub.description[0].islower()
    for form in sub.forms:
        assert form.usage.split()[0] == sub.name


def test_each_command_type_belongs_to_exactly_one_row() -> None:
    owners: dict[type, set[str]] = {}
    for sub in SUBCOMMANDS:
        for form in sub.forms:
            owners.setdefault(form.command, set()).add(sub.name)
    assert all(len(names) == 1 for names in owners.values()), owners


@pytest.mark.parametrize(
    "text",
    [
        "help",
        "link 5f1a2b3c4d5e6f7a8b9c0d1e",
        "connect 5f1a2b3c4d5e6f7a8b9c0d1e",
        "unlink 5f1a2b3c4d5e6f7a8b9c0d1e",
        "status",
        "pending",
        "invoice 65aa00bb11cc22dd33ee44ff",
        "costs 2024-01 2024-02",
        "threshold 5",
        "oncall off",
        "digest now",
    ],
)
def test_a_parsed_command_leads_back_to_the_row_it_was_named_by(text: str) -> None:
    assert subcommand_of(parse(text)).name == text.split()[0]


def test_the_digest_help_states_the_defaults_the_parser_uses() -> None:
    line = help_text("digest")
    assert f"default day {DEFAULT_DAY} at {DEFAULT_TIME:%H:%M} UTC" in line
    assert parse("digest on") == Digest("on", day=DEFAULT_DAY, time=DEFAULT_TIME)


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("", "help"),
        ("PENDING nonsense", "pending"),
        ("threshold -5", "threshold"),
        ("pendng", "unknown"),
        ("<@U123|x> pending", "unknown"),
    ],
)
def test_a_metric_label_is_a_row_name_or_unknown(text: str, label: str) -> None:
    assert label_of(text) == label
    assert label in (*NAMES, "unknown")
