"""The `/atlas-billing` language: the typed commands, their forms and one parser per sub-command.

The table that ties each sub-command to its forms, parser and handler is `handlers.subcommands`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, time
from enum import StrEnum
from typing import Literal

from bot.core.money import format_cents, parse_dollars
from bot.core.schedule import DEFAULT_DAY, DEFAULT_TIME

MAX_TEXT = 2000
MAX_THRESHOLD_CENTS = 100_000_000 * 100
GROUP_BY = ("services", "projects", "clusters", "organizations")  # the order help shows
# Cost Explorer keeps about two years of history and one query may span at most a year.
MAX_SPAN_MONTHS = 12
MAX_HISTORY_MONTHS = 24


class UsageError(ValueError):
    """Bad command text; ``str()`` says what was wrong and shows the right form."""

    def __init__(self, reason: str, usage: str | None = None) -> None:
        self.reason = reason
        self.usage = usage
        super().__init__(f"{reason} Usage: {usage}" if usage else reason)


# ---- the commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Help:
    topic: str | None = None  # a sub-command name: `help costs` shows only that one


@dataclass(frozen=True)
class Link:
    org_id: str


@dataclass(frozen=True)
class Connect:
    org_id: str


@dataclass(frozen=True)
class Unlink:
    org_id: str


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Pending:
    org_id: str | None = None


@dataclass(frozen=True)
class Invoice:
    invoice_id: str
    org_id: str | None = None


@dataclass(frozen=True)
class Costs:
    start: date  # first of a month
    end: date  # first of a month, exclusive
    group_by: str | None = None  # one of GROUP_BY
    org_id: str | None = None


@dataclass(frozen=True)
class Threshold:
    amount_cents: int | None  # None: `threshold off`
    org_id: str | None = None


@dataclass(frozen=True)
class OnCall:
    kind: Literal["user", "usergroup"] | None  # None (with id None): `oncall off`
    id: str | None


@dataclass(frozen=True)
class Digest:
    action: Literal["on", "off", "now"]
    day: int | Literal["last"] | None = None  # set for "on": 1–31 or "last"
    time: time | None = None  # set for "on": naive, meaning UTC
    org_id: str | None = None  # only for "now"


Command = (
    Help
    | Link
    | Connect
    | Unlink
    | Status
    | Pending
    | Invoice
    | Costs
    | Threshold
    | OnCall
    | Digest
)


# ---- forms: usage and permissions -----------------------------------------------------------


class Who(StrEnum):
    ANYONE = "anyone"
    ADMINS = "admins"
    LINKED = "anyone in a linked channel"


@dataclass(frozen=True)
class Form:
    """One way to write a sub-command: its usage line, who may run it, what it parses to."""

    usage: str
    who: Who
    command: type
    action: str | None = None  # tells Digest forms apart, whose permissions differ


Forms = tuple[Form, ...]

# A sub-command's parser: its arguments, today (for the rules that depend on it) and its forms
# (whose usage lines its errors show).
Parser = Callable[[list[str], date | None, Forms], Command]


def usage_of(forms: Forms, action: str | None = None) -> str:
    """The usage line an error shows: every form's, or the one form of `action`."""
    if action is None:
        return " / ".join(form.usage for form in forms)
    return next(form.usage for form in forms if form.action == action)


BY_GROUP = "by " + "|".join(GROUP_BY)


# ---- parsing ------------------------------------------------------------------------------------

# Slack sends mentions as `<…>` entities; a user's `name` label may in principle hold a blank, so
# an entity is one token whatever it contains.
_TOKENS = re.compile(r"<[^<>]*>|\S+")
_HEX24 = re.compile(r"[a-f0-9]{24}")
_USER = re.compile(r"[UW][A-Z0-9]{2,19}")
_GROUP = re.compile(r"S[A-Z0-9]{2,19}")
_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]{2,19})(?:\|[^<>]*)?>")
_GROUP_MENTION = re.compile(r"<!subteam\^(S[A-Z0-9]{2,19})(?:\|[^<>]*)?>")
_MONTH = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?", re.ASCII)
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})", re.ASCII)
_DAY = re.compile(r"\d{1,2}", re.ASCII)
# Tab and newlines are blanks between tokens; any other control or format character (NUL, escape,
# zero-width and bidi marks) has no place in a command and can disguise what it says.
_BLANKS = frozenset("\t\n\r")


def tokens(text: str) -> list[str]:
    """The words of the text after `/atlas-billing`, a Slack entity (`<@U…|name>`) being one.

    Too long a text, or one hiding control or format characters, is refused here, before any
    sub-command sees it.
    """
    if len(text) > MAX_TEXT:
        raise UsageError(
            f"The command is too long ({len(text):,} characters; at most {MAX_TEXT:,})."
        )
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf") and char not in _BLANKS:
            raise UsageError(
                f"The command contains a control character (U+{ord(char):04X}); type it as plain text."
            )
    return _TOKENS.findall(text)


def org_only(kind: type[Link] | type[Connect] | type[Unlink]) -> Parser:
    """The parser of a sub-command whose one argument is an ORG_ID."""
    name = kind.__name__.lower()

    def parse_it(args: list[str], today: date | None, forms: Forms) -> Link | Connect | Unlink:
        usage = usage_of(forms)
        if not args:
            raise UsageError(f"`{name}` needs an ORG_ID.", usage)
        if len(args) > 1:
            if _HEX24.fullmatch("".join(args)):
                raise UsageError("The ORG_ID has blanks in it; write it as one word.", usage)
            raise UsageError(extra(args[1:]), usage)
        return kind(_hex24(args[0], "organization ID", usage))

    return parse_it


def parse_status(args: list[str], today: date | None, forms: Forms) -> Status:
    if args:
        raise UsageError(extra(args), usage_of(forms))
    return Status()


def parse_pending(args: list[str], today: date | None, forms: Forms) -> Pending:
    usage = usage_of(forms)
    if len(args) > 1:
        raise UsageError(extra(args[1:]), usage)
    return Pending(_optional_org(args, usage))


def parse_invoice(args: list[str], today: date | None, forms: Forms) -> Invoice:
    usage = usage_of(forms)
    if not args:
        raise UsageError("`invoice` needs an INVOICE_ID.", usage)
    if len(args) > 2:
        raise UsageError(extra(args[2:]), usage)
    invoice_id = _hex24(args[0], "invoice ID", usage)
    return Invoice(invoice_id, _optional_org(args[1:], usage))


def parse_costs(args: list[str], today: date | None, forms: Forms) -> Costs:
    usage = usage_of(forms)
    if len(args) < 2:
        raise UsageError("`costs` needs START and END months, like `costs 2024-01 2024-04`.", usage)
    start = _month(args[0], "START", usage)
    end = _month(args[1], "END", usage)
    group_by: str | None = None
    org_id: str | None = None
    rest = iter(args[2:])
    # `by DIM` and ORG_ID may come in either order, each at most once.
    for token in rest:
        word = token.lower()
        if word == "by":
            if group_by is not None:
                raise UsageError("`by` may be given only once.", usage)
            dim = next(rest, None)
            if dim is None:
                raise UsageError(f"`by` needs one of {', '.join(GROUP_BY)}.", usage)
            if dim.lower() not in GROUP_BY:
                raise UsageError(
                    f"Cannot group by {show(dim)}; choose one of {', '.join(GROUP_BY)}.", usage
                )
            group_by = dim.lower()
        elif word in GROUP_BY:
            raise UsageError(f"Write `by {word}` to group the costs by {word}.", usage)
        elif org_id is None:
            org_id = _hex24(token, "organization ID", usage)
        else:
            raise UsageError(extra([token]), usage)
    if end <= start:
        raise UsageError(
            f"END ({end.isoformat()}) must be after START ({start.isoformat()}); END is exclusive, "
            f"so `costs 2024-02 2024-03` is February 2024.",
            usage,
        )
    span = _months_between(start, end)
    if span > MAX_SPAN_MONTHS:
        raise UsageError(
            f"The range spans {span} months; a query may span at most {MAX_SPAN_MONTHS}.", usage
        )
    if today is not None:
        this_month = today.replace(day=1)
        latest_end = _add_months(this_month, 1)
        earliest_start = _add_months(this_month, -MAX_HISTORY_MONTHS)
        if end > latest_end:
            raise UsageError(
                f"END ({end.isoformat()}) is in the future; the latest END is "
                f"{latest_end.isoformat()} (this month included).",
                usage,
            )
        if start < earliest_start:
            raise UsageError(
                f"START ({start.isoformat()}) is more than {MAX_HISTORY_MONTHS} months ago; "
                f"Cost Explorer goes back to {earliest_start.isoformat()}.",
                usage,
            )
    return Costs(start, end, group_by, org_id)


def parse_threshold(args: list[str], today: date | None, forms: Forms) -> Threshold:
    usage = usage_of(forms)
    if not args:
        raise UsageError("`threshold` needs an AMOUNT in USD, or `off`.", usage)
    if len(args) > 2:
        raise UsageError(extra(args[2:]), usage)
    org_id = _optional_org(args[1:], usage)
    if args[0].lower() == "off":
        return Threshold(None, org_id)
    # The user's amount comes back cut short: a 2,000-character token must not return whole.
    try:
        cents = parse_dollars(args[0])
    except ValueError as error:
        problem = (
            "has more than two decimals; amounts are in whole cents"
            if "decimals" in str(error)
            else "is not an amount like 5000, $5,000 or 5000.50"
        )
        raise UsageError(f"{show(args[0])} {problem}.", usage) from None
    amount = format_cents(cents)
    amount = amount if len(amount) <= 40 else amount[:37] + "…"
    if cents <= 0:
        raise UsageError(f"The threshold must be more than $0.00, got {amount}.", usage)
    if cents > MAX_THRESHOLD_CENTS:
        raise UsageError(
            f"The threshold must be at most {format_cents(MAX_THRESHOLD_CENTS)}, got {amount}.",
            usage,
        )
    return Threshold(cents, org_id)


def parse_oncall(args: list[str], today: date | None, forms: Forms) -> OnCall:
    usage = usage_of(forms)
    if not args:
        raise UsageError("`oncall` needs a user or user group to mention, or `off`.", usage)
    if len(args) > 1:
        raise UsageError("`oncall` takes one user or one user group.", usage)
    token = args[0]
    if token.lower() == "off":
        return OnCall(None, None)
    if match := _USER_MENTION.fullmatch(token) or _USER.fullmatch(token):
        return OnCall("user", match.group(match.lastindex or 0))
    if match := _GROUP_MENTION.fullmatch(token) or _GROUP.fullmatch(token):
        return OnCall("usergroup", match.group(match.lastindex or 0))
    raise UsageError(
        f"{show(token)} is not a Slack user or user group; mention one (`@alice`, `@oncall-team`) "
        "or give its ID (U…, W… or S…).",
        usage,
    )


def parse_digest(args: list[str], today: date | None, forms: Forms) -> Digest:
    if not args:
        raise UsageError("`digest` needs `on`, `off` or `now`.", usage_of(forms))
    action, rest = args[0].lower(), args[1:]
    if action == "off":
        if rest:
            raise UsageError(extra(rest), usage_of(forms, "off"))
        return Digest("off")
    if action == "now":
        usage = usage_of(forms, "now")
        if len(rest) > 1:
            raise UsageError(extra(rest[1:]), usage)
        return Digest("now", org_id=_optional_org(rest, usage))
    if action != "on":
        raise UsageError(
            f"{show(args[0])} is not a digest action; use `on`, `off` or `now`.", usage_of(forms)
        )
    usage = usage_of(forms, "on")
    day: int | Literal["last"] | None = None
    at: time | None = None
    # DAY and HH:MM are told apart by the colon, so their order does not matter.
    for token in rest:
        if ":" in token:
            if at is not None:
                raise UsageError("Give the time of day only once.", usage)
            at = _clock(token, usage)
        else:
            if day is not None:
                raise UsageError("Give the DAY only once.", usage)
            day = _day(token, usage)
    return Digest(
        "on", day=DEFAULT_DAY if day is None else day, time=DEFAULT_TIME if at is None else at
    )


# ---- pieces -------------------------------------------------------------------------------------


def _optional_org(args: list[str], usage: str) -> str | None:
    return _hex24(args[0], "organization ID", usage) if args else None


def _hex24(token: str, what: str, usage: str) -> str:
    if _HEX24.fullmatch(token):
        return token
    odd = next((char for char in token if char in "/\\%.?#"), None)
    if not token.isascii():
        problem = " (it has characters that are not plain ASCII)"
    elif odd is not None:
        problem = f" (it contains {odd!r})"
    elif re.fullmatch(r"[A-Fa-f0-9]{24}", token):
        problem = " (it has uppercase letters; IDs are lowercase)"
    elif re.fullmatch(r"[a-f0-9]+", token):
        problem = f" (it has {len(token)} digits, not 24)"
    else:
        problem = ""
    raise UsageError(
        f"{show(token)} is not an {what}{problem}: an {what} is 24 lowercase hex digits, "
        "like 5f1a2b3c4d5e6f7a8b9c0d1e.",
        usage,
    )


def _month(token: str, what: str, usage: str) -> date:
    match = _MONTH.fullmatch(token)
    if match is None:
        raise UsageError(f"{what} {show(token)} is not a month like 2024-01 or 2024-01-01.", usage)
    year, month, day = int(match[1]), int(match[2]), match[3]
    if not 1 <= month <= 12 or year < 1:
        raise UsageError(f"{what} {show(token)} is not a valid month.", usage)
    if day is not None and int(day) != 1:
        try:
            date(year, month, int(day))
        except ValueError:
            raise UsageError(f"{what} {show(token)} is not a valid date.", usage) from None
        raise UsageError(f"{show(token)} is not a first of month.", usage)
    return date(year, month, 1)


def _clock(token: str, usage: str) -> time:
    match = _CLOCK.fullmatch(token)
    if match is None:
        raise UsageError(f"{show(token)} is not a time like 09:00 (HH:MM, UTC).", usage)
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        raise UsageError(f"{show(token)} is not a time of day; use 00:00 to 23:59 (UTC).", usage)
    return time(hour, minute)


def _day(token: str, usage: str) -> int | Literal["last"]:
    if token.lower() == "last":
        return "last"
    if not _DAY.fullmatch(token) or not 1 <= int(token) <= 31:
        raise UsageError(f"{show(token)} is not a DAY; use 1 to 31, or `last`.", usage)
    return int(token)


def _add_months(first: date, months: int) -> date:
    index = first.year * 12 + first.month - 1 + months
    # Clamped, so a `today` at the ends of the calendar cannot raise anything but UsageError.
    if index < 12 * date.min.year:
        return date.min
    if index >= 12 * (date.max.year + 1):
        return date.max
    return date(index // 12, index % 12 + 1, 1)


def _months_between(start: date, end: date) -> int:
    return (end.year - start.year) * 12 + end.month - start.month


def extra(tokens: list[str]) -> str:
    """The error for words a form has no place for."""
    return f"Unexpected {' '.join(show(t) for t in tokens[:3])}{' …' if len(tokens) > 3 else ''}."


def show(token: str) -> str:
    """The user's own word, quoted and cut short, to come back to them inside our sentence."""
    text = token if len(token) <= 40 else token[:37] + "…"
    return f"'{text}'"
