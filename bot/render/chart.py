"""The digest chart: monthly totals and this month against the last per service, as a PNG.

Drawn on a bare ``Figure`` with the Agg canvas, never pyplot: no global
backend, no display, safe from several threads at once. matplotlib is
imported when a chart is drawn, so the CLI starts without it. Amounts become
floats only here, for drawing; every label that shows money comes from
``format_cents``.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from bot.core.money import format_cents
from bot.render.digests import DigestSummary, month_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis

WIDTH_PX, HEIGHT_PX, DPI = 800, 450, 100
THIS_MONTH = "#1f6feb"  # the month reported
OTHER_MONTHS = "#9db8d9"
PREVIOUS = "#c9ced6"
_LABEL_LENGTH = 22


def _dollars_axis(axis: Axis) -> None:
    """Dollar ticks with thousands separators; cents only when the scale is small."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    def label(value: float, _position: int) -> str:
        sign = "-" if value < 0 else ""
        # The view limits decide the precision, so ticks of $0.50 do not all read "$0".
        low, high = axis.get_view_interval()
        digits = 2 if max(abs(low), abs(high)) < 10 else 0
        return f"{sign}${abs(value):,.{digits}f}"

    axis.set_major_locator(MaxNLocator(nbins=5))
    axis.set_major_formatter(FuncFormatter(label))


def _short(name: str) -> str:
    return name if len(name) <= _LABEL_LENGTH else name[: _LABEL_LENGTH - 1] + "…"


def _month_label(key: str, many: bool) -> str:
    year, month = (int(part) for part in key.split("-"))
    name = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[
        month - 1
    ]
    return f"{name}\n{year}" if not many else f"{name} {year % 100:02d}"


def _months_panel(ax: Axes, summary: DigestSummary) -> None:
    series = summary.daily_or_monthly
    reported = f"{summary.month:%Y-%m}"
    many = len(series) > 6
    positions = range(len(series))
    bars = ax.bar(
        positions,
        [cents / 100 for _, cents in series],
        color=[THIS_MONTH if key == reported else OTHER_MONTHS for key, _ in series],
        width=0.7,
    )
    ax.set_xticks(list(positions), [_month_label(key, many) for key, _ in series])
    if many:
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    # Exact amounts on the compared months when there is room; the title carries the total.
    if len(series) <= 4:
        compared = (reported, f"{summary.previous_month:%Y-%m}")
        for bar, (key, cents) in zip(bars, series, strict=True):
            if key in compared:
                # Credits (negative) are labelled under their bar, spend above it.
                below = cents < 0
                ax.annotate(
                    format_cents(cents),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, -3 if below else 3),
                    textcoords="offset points",
                    ha="center",
                    va="top" if below else "bottom",
                    fontsize=8,
                )
    if any(cents < 0 for _, cents in series):
        ax.axhline(0, color="#555555", linewidth=0.6)
    ax.set_title("Spend per month", fontsize=10)
    ax.margins(y=0.15)
    _dollars_axis(ax.yaxis)


def _services_panel(ax: Axes, summary: DigestSummary) -> None:
    services = summary.services
    # Largest at the top: barh draws from the bottom up.
    rows = range(len(services) - 1, -1, -1)
    height = 0.38
    ax.barh(
        [r + height / 2 for r in rows],
        [m.previous_cents / 100 for m in services],
        height=height,
        color=PREVIOUS,
        label=month_name(summary.previous_month),
    )
    ax.barh(
        [r - height / 2 for r in rows],
        [m.cents / 100 for m in services],
        height=height,
        color=THIS_MONTH,
        label=month_name(summary.month),
    )
    ax.set_yticks(list(rows), [_short(m.name) for m in services], fontsize=8)
    ax.set_title("Top services", fontsize=10)
    # Below the axis, where no bar can be hidden under it.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, frameon=False)
    ax.axvline(0, color="#555555", linewidth=0.6)
    _dollars_axis(ax.xaxis)
    ax.tick_params(axis="x", labelsize=8)


def digest_chart_png(summary: DigestSummary) -> bytes:
    """An 800×450 PNG: spend per month, and per top service this month against the last."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    if summary.services:
        months_ax, services_ax = figure.subplots(1, 2, width_ratios=(1, 1.15))
        _services_panel(services_ax, summary)
    else:
        months_ax = figure.subplots()
    _months_panel(months_ax, summary)
    for ax in figure.axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
    org = f"{summary.org_name} ({summary.org_id})" if summary.org_name else f"Org {summary.org_id}"
    figure.suptitle(
        f"{org} · Atlas spend, {month_name(summary.month)}: {format_cents(summary.total_cents)}",
        fontsize=11,
    )
    buffer = io.BytesIO()
    # No "Software" entry: the PNG's bytes then depend on the picture alone.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
