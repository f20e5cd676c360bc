"""The monthly digest: a Cost Explorer result summarised against the month before, as Block Kit.

Pure: ``summarise_digest`` turns rows into exact cents (summed in ``Decimal``,
rounded once per total), ``digest_message`` turns the summary into a message.
The chart lives in ``bot.render.chart`` so matplotlib loads only when drawn.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    HeaderBlock,
    ImageBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.atlas import CostResult, CostRow
from bot.core.money import dollars_to_cents, format_cents
from bot.core.months import add_months, first_of_month
from bot.render.blocks import TOP, Message, _finish, _md, escape

FIELD_TEXT_LIMIT = 2000  # Slack's limit for one section field
ALT_TEXT_LIMIT = 2000

# Fixed English names: strftime("%B") follows the process locale.
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_TENTH = Decimal("0.1")


def month_name(month: date, *, year: bool = True) -> str:
    """``date(2026, 10, 1)`` → ``October 2026`` (or ``October``)."""
    name = _MONTHS[month.month - 1]
    return f"{name} {month.year}" if year else name


def month_before(month: date) -> date:
    return add_months(month, -1)


def month_after(month: date) -> date:
    return add_months(month, 1)


def change_percent(cents: int, previous_cents: int) -> Decimal | None:
    """Change against ``previous_cents`` in percent, one decimal half-even; None from zero.

    Relative to the magnitude of the previous amount, so a month of credits
    (negative) followed by a smaller credit still reads as a rise.
    """
    if previous_cents == 0:
        return None
    ratio = Decimal(cents - previous_cents) * 100 / abs(Decimal(previous_cents))
    return ratio.quantize(_TENTH, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Mover:
    """One service or project: this month's amount and the month before's."""

    name: str
    cents: int
    previous_cents: int

    @property
    def change_cents(self) -> int:
        return self.cents - self.previous_cents

    @property
    def change_percent(self) -> Decimal | None:
        return change_percent(self.cents, self.previous_cents)


@dataclass(frozen=True)
class DigestSummary:
    """What a digest says about one org and one month."""

    org_id: str
    org_name: str | None
    month: date
    previous_month: date
    total_cents: int
    previous_cents: int
    change_cents: int
    change_percent: Decimal | None
    services: tuple[Mover, ...]
    projects: tuple[Mover, ...]
    month_to_date_cents: int | None
    daily_or_monthly: tuple[tuple[str, int], ...]

    @property
    def org_label(self) -> str:
        """The org's name when Atlas gave one, else its ID (unescaped)."""
        return self.org_name or self.org_id


def _movers(
    rows: Iterable[tuple[date, CostRow]],
    month: date,
    previous: date,
    dimension: str,
) -> tuple[Mover, ...]:
    sums: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for when, row in rows:
        sums[row.key(dimension)][when] += row.usage_amount
    movers = [
        Mover(
            name=name,
            cents=dollars_to_cents(by_month.get(month, Decimal(0))),
            previous_cents=dollars_to_cents(by_month.get(previous, Decimal(0))),
        )
        for name, by_month in sums.items()
    ]
    movers.sort(key=lambda m: (-m.cents, m.name))
    return tuple(movers[:TOP])


def summarise_digest(
    result: CostResult,
    *,
    org_id: str,
    month: date,
    month_to_date_cents: int | None = None,
) -> DigestSummary:
    """Totals, change and top movers of ``month`` against the month before.

    Rows are placed in months by ``usage_date`` (rows without one count in no
    month). ``projects`` is empty when no row carries a project (a query
    grouped by services); ``services`` is empty when no row carries a service
    (a query grouped by organizations). The chart series holds every month in
    the result plus the two compared, so a month without usage shows as $0.
    """
    month = first_of_month(month)
    previous = month_before(month)
    dated = [(first_of_month(r.usage_date), r) for r in result.rows if r.usage_date is not None]
    compared = [(when, r) for when, r in dated if when in (month, previous)]

    by_month: dict[date, Decimal] = {month: Decimal(0), previous: Decimal(0)}
    for when, row in dated:
        by_month[when] = by_month.get(when, Decimal(0)) + row.usage_amount
    monthly = {key: dollars_to_cents(amount) for key, amount in by_month.items()}

    services: tuple[Mover, ...] = ()
    if any(r.service for r in result.rows):
        services = _movers(compared, month, previous, "services")
    projects: tuple[Mover, ...] = ()
    if any(r.project_name or r.project_id for r in result.rows):
        projects = _movers(compared, month, previous, "projects")

    # Only this org's rows may name it: a paying org's result can hold linked orgs' rows.
    org_name = next(
        (
            r.organization_name
            for r in result.rows
            if r.organization_name and r.organization_id in (None, org_id)
        ),
        None,
    )
    total, before = monthly[month], monthly[previous]
    return DigestSummary(
        org_id=org_id,
        org_name=org_name,
        month=month,
        previous_month=previous,
        total_cents=total,
        previous_cents=before,
        change_cents=total - before,
        change_percent=change_percent(total, before),
        services=services,
        projects=projects,
        month_to_date_cents=month_to_date_cents,
        daily_or_monthly=tuple((f"{key:%Y-%m}", cents) for key, cents in sorted(monthly.items())),
    )


def _percent(value: Decimal, *, signed: bool = True) -> str:
    return f"{value:+,}%" if signed else f"{abs(value):,}%"


def describe_change(cents: int, previous_cents: int) -> str:
    """``▲ $100.00, +8.8%``, ``▼ $5.00, -1.2%``, ``no change`` or ``new spend``."""
    change = cents - previous_cents
    if change == 0:
        return "no change"
    percent = change_percent(cents, previous_cents)
    if percent is None:
        return "new spend"
    arrow = "▲" if change > 0 else "▼"
    return f"{arrow} {format_cents(abs(change))}, {_percent(percent)}"


def _field(text: str) -> MarkdownTextObject:
    if len(text) > FIELD_TEXT_LIMIT:
        text = text[: FIELD_TEXT_LIMIT - 1] + "…"
    return MarkdownTextObject(text=text)


def _mover_lines(movers: Iterable[Mover]) -> str:
    return "\n".join(
        f"• {escape(m.name)} — {format_cents(m.cents)}"
        f" ({describe_change(m.cents, m.previous_cents)})"
        for m in movers
    )


def _headline_change(summary: DigestSummary) -> str:
    """The change as the notification text puts it: ``▲ 8.8% vs September``."""
    before = month_name(summary.previous_month, year=False)
    if summary.change_cents == 0:
        return f"no change vs {before}"
    if summary.change_percent is None:
        return f"new spend; nothing in {before}"
    arrow = "▲" if summary.change_cents > 0 else "▼"
    return f"{arrow} {_percent(summary.change_percent, signed=False)} vs {before}"


def digest_message(summary: DigestSummary, *, chart_file_id: str | None = None) -> Message:
    """The digest as Block Kit; with ``chart_file_id`` (an uploaded PNG) it shows the chart."""
    title = f"Atlas spend for {month_name(summary.month)}"
    org = (
        f"*{escape(summary.org_name)}* (`{summary.org_id}`)"
        if summary.org_name
        else f"Org `{summary.org_id}`"
    )
    blocks: list[Block] = [
        HeaderBlock(text=title),
        SectionBlock(
            text=_md(
                f"{org}\n"
                f"Total: *{format_cents(summary.total_cents)}*"
                f" ({describe_change(summary.total_cents, summary.previous_cents)})"
                f" vs {format_cents(summary.previous_cents)}"
                f" in {month_name(summary.previous_month)}"
            )
        ),
    ]
    fields = []
    if summary.services:
        fields.append(_field("*Top services*\n" + _mover_lines(summary.services)))
    if summary.projects:
        fields.append(_field("*Top projects*\n" + _mover_lines(summary.projects)))
    if fields:
        blocks.append(SectionBlock(fields=fields))
    if summary.month_to_date_cents is not None:
        blocks.append(
            ContextBlock(
                elements=[
                    _md(
                        f"{month_name(month_after(summary.month))} so far:"
                        f" {format_cents(summary.month_to_date_cents)}"
                    )
                ]
            )
        )
    if chart_file_id:
        alt = (
            f"Bar chart of monthly Atlas spend for {summary.org_label}"
            f" up to {month_name(summary.month)}: "
            + ", ".join(
                f"{label} {format_cents(cents)}" for label, cents in summary.daily_or_monthly
            )
        )
        if len(alt) > ALT_TEXT_LIMIT:
            alt = alt[: ALT_TEXT_LIMIT - 1] + "…"
        blocks.append(
            ImageBlock(
                slack_file={"id": chart_file_id},
                alt_text=alt,
                title=f"Monthly spend to {month_name(summary.month)}",
            )
        )
    text = (
        f"{title} ({escape(summary.org_label)}): {format_cents(summary.total_cents)}"
        f" ({_headline_change(summary)})"
    )
    return _finish(text, blocks)
