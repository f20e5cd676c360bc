"""The one table of `/atlas-billing` sub-commands: a row each, with its forms, parser and handler.

Everything else about a sub-command is derived from its row: parsing (`parse`), the help text
(each handler's docstring), who may run each form, and the `subcommand` label of the metrics.
Adding a sub-command is one row here plus its handler (and its parser in `handlers/grammar.py`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from handlers import costs, credentials, grammar, links, settings, spend
from handlers.grammar import (
    BY_GROUP,
    Command,
    Connect,
    Costs,
    Digest,
    Form,
    Forms,
    Help,
    Invoice,
    Link,
    OnCall,
    Parser,
    Pending,
    Status,
    Threshold,
    Unlink,
    UsageError,
    Who,
)
from handlers.invocation import Invocation

Handler = Callable[[Invocation, Any], Awaitable[None]]


@dataclass(frozen=True)
class SubCommand:
    name: str
    forms: Forms
    parser: Parser
    # What runs after the acknowledgement; `help` has none, it is answered in the ack itself.
    handler: Handler | None
    # Opens a modal with the command's trigger, valid for 3 seconds: it runs at once (never
    # waits in line) and its handler checks who may run it after the modal is open.
    opens_modal: bool = False

    @property
    def description(self) -> str:
        """The help line's description: the first paragraph of the handler's docstring."""
        doc = inspect.getdoc(self.handler or self.parser) or ""
        first = " ".join(doc.split("\n\n")[0].split()).rstrip(".")
        return first[:1].lower() + first[1:]

    @property
    def usage(self) -> str:
        return grammar.usage_of(self.forms)


def _help(args: list[str], today: date | None, forms: Forms) -> Help:
    """This list"""
    if not args:
        return Help()
    if len(args) > 1:
        raise UsageError("`help` takes at most one sub-command name.", grammar.usage_of(forms))
    topic = args[0].lower()
    if topic not in BY_NAME:
        raise UsageError(_unknown(topic))
    return Help(topic)


SUBCOMMANDS: tuple[SubCommand, ...] = (
    SubCommand("help", (Form("help [SUB-COMMAND]", Who.ANYONE, Help),), _help, None),
    SubCommand(
        "link",
        (Form("link ORG_ID", Who.ADMINS, Link),),
        grammar.org_only(Link),
        links.link,
    ),
    SubCommand(
        "connect",
        (Form("connect ORG_ID", Who.ADMINS, Connect),),
        grammar.org_only(Connect),
        credentials.connect,
        opens_modal=True,
    ),
    SubCommand(
        "unlink",
        (Form("unlink ORG_ID", Who.ADMINS, Unlink),),
        grammar.org_only(Unlink),
        links.unlink,
    ),
    SubCommand("status", (Form("status", Who.ANYONE, Status),), grammar.parse_status, links.status),
    SubCommand(
        "pending",
        (Form("pending [ORG_ID]", Who.LINKED, Pending),),
        grammar.parse_pending,
        spend.pending,
    ),
    SubCommand(
        "invoice",
        (Form("invoice INVOICE_ID [ORG_ID]", Who.LINKED, Invoice),),
        grammar.parse_invoice,
        spend.invoice,
    ),
    SubCommand(
        "costs",
        (Form(f"costs START END [{BY_GROUP}] [ORG_ID]", Who.LINKED, Costs),),
        grammar.parse_costs,
        costs.costs,
    ),
    SubCommand(
        "threshold",
        (
            Form("threshold AMOUNT [ORG_ID]", Who.ADMINS, Threshold),
            Form("threshold off [ORG_ID]", Who.ADMINS, Threshold),
        ),
        grammar.parse_threshold,
        settings.threshold,
    ),
    SubCommand(
        "oncall",
        (
            Form("oncall @user|@usergroup", Who.ADMINS, OnCall),
            Form("oncall off", Who.ADMINS, OnCall),
        ),
        grammar.parse_oncall,
        settings.oncall,
    ),
    SubCommand(
        "digest",
        (
            Form("digest on [DAY] [HH:MM]", Who.ADMINS, Digest, "on"),
            Form("digest off", Who.ADMINS, Digest, "off"),
            Form("digest now [ORG_ID]", Who.LINKED, Digest, "now"),
        ),
        grammar.parse_digest,
        settings.digest,
    ),
)

BY_NAME = {sub.name: sub for sub in SUBCOMMANDS}
NAMES = tuple(BY_NAME)
_BY_TYPE = {form.command: sub for sub in SUBCOMMANDS for form in sub.forms}


def parse(text: str, *, today: date | None = None) -> Command:
    """Parse the text after `/atlas-billing` into a typed command, or raise UsageError.

    `today` enables the date-range rules that depend on it (Cost Explorer's window); without it
    only the rules that hold on every day are checked.
    """
    words = grammar.tokens(text)
    if not words:
        return Help()
    name, args = words[0].lower(), words[1:]
    if name not in BY_NAME:
        raise UsageError(_unknown(name))
    sub = BY_NAME[name]
    return sub.parser(args, today, sub.forms)


def subcommand_of(command: Command) -> SubCommand:
    """The row a parsed command came from."""
    return _BY_TYPE[type(command)]


def who_may_run(command: Command) -> Who:
    """Who may run this command: exact per form (`digest now` is not admin-only)."""
    action = getattr(command, "action", None)
    for form in subcommand_of(command).forms:
        if form.command is type(command) and form.action in (None, action):
            return form.who
    raise TypeError(f"not a command: {command!r}")


def needs_admin(command: Command) -> bool:
    return who_may_run(command) is Who.ADMINS


def label_of(text: str) -> str:
    """The sub-command a bad command text was meant for, or ``unknown``: never the text
    itself, so a metric label can only take a few values."""
    words = text.split(maxsplit=1)
    name = words[0].lower() if words else "help"
    return name if name in BY_NAME else "unknown"


def usage_lines() -> list[str]:
    """Every form's usage line, e.g. ``pending [ORG_ID]``."""
    return [form.usage for sub in SUBCOMMANDS for form in sub.forms]


def help_text(topic: str | None = None) -> str:
    """One line per sub-command (or only `topic`'s), generated from the table."""
    subs = SUBCOMMANDS if topic is None else (BY_NAME[topic],)
    lines = [] if topic else ["Usage: `/atlas-billing SUB-COMMAND …`"]
    for sub in subs:
        # Only the first form carries the command name: the line stays short enough to read.
        forms = " / ".join(
            f"`{'/atlas-billing ' if i == 0 else ''}{form.usage}`"
            for i, form in enumerate(sub.forms)
        )
        lines.append(f"• {forms} — {sub.description} ({_who_text(sub)})")
    if topic is None:
        lines.append("ORG_ID is needed only when this channel is linked to more than one org.")
    return "\n".join(lines)


def _who_text(sub: SubCommand) -> str:
    first = sub.forms[0].who
    others = [f for f in sub.forms if f.who is not first]
    if not others:
        return first.value
    exceptions = ", ".join(f"`{' '.join(f.usage.split()[:2])}`: {f.who.value}" for f in others)
    return f"{first.value}; {exceptions}"


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, NAMES, n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return (
        f"Unknown sub-command {grammar.show(name)}.{hint} Sub-commands: {', '.join(NAMES)}; "
        "`/atlas-billing help` shows how to use them."
    )
