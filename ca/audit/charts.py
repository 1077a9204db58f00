"""The compliance document's charts as inline SVG, drawn by matplotlib.

matplotlib is imported here only, and only `matplotlib.figure.Figure` with its own canvas:
pyplot and the global backend stay untouched. The SVG is made fit to sit inside an HTML
page: no XML prolog, doctype or metadata (they name outside addresses), no fixed size
(the page sizes it), text as <text> (no font files), and every id and reference prefixed
with the chart's name, so that several charts on one page share no id. The hash salt is
fixed, so one model always gives the same bytes.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec

from ca.audit.document import ComplianceDocument, LifetimeBar, NamespaceSummary, ReasonRefusals
from ca.ledger.compliance import DayCount

P = ParamSpec("P")

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ISSUED = "#2563eb"
LIVE = "#16a34a"
REFUSED = "#dc2626"
OVER = "#dc2626"
WITHIN = "#2563eb"
INK = "#1f2937"
GRID = "#e5e7eb"
WIDTH_IN = 10.0
MAX_DATE_LABELS = 10

_STYLE: dict[Any, Any] = {
    "svg.hashsalt": "meshca-compliance-report",
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9,
    "text.color": INK,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#9ca3af",
    "xtick.color": INK,
    "ytick.color": INK,
}


def _styled(draw: Callable[P, str | None]) -> Callable[P, str | None]:
    """A chart drawn and saved in the charts' look (text takes its font when made, ids their
    hash salt when saved), whatever rcParams say outside."""

    @functools.wraps(draw)
    def styled(*args: P.args, **kwargs: P.kwargs) -> str | None:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return draw(*args, **kwargs)

    return styled


def _figure(height_in: float) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    axes.set_axisbelow(True)
    return figure, axes


def _svg(figure: Figure, name: str, title: str) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return inline_svg(buffer.getvalue(), name, title)


def inline_svg(svg: str, name: str, title: str) -> str:
    """matplotlib's SVG document as an element for an HTML page (see the module's docstring)."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{name}-{m[1]}"', svg)
    svg = re.sub(
        r'(url\(#|href="#)([^")]+)',
        lambda m: f"{m[1]}{name}-{m[2]}" if m[2] in ids else m[0],
        svg,
    )
    # The stylesheet matplotlib writes applies to `*`: inside a page, only to this chart.
    svg = svg.replace("*{stroke-linejoin", f"#{name} *{{stroke-linejoin")
    head_end = svg.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", svg[:head_end])
    escaped = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    head += f' id="{name}" class="chart" role="img" aria-label="{escaped}"'
    return head + svg[head_end:].rstrip() + "\n"


def _int_axis(axes: Axes, axis: str) -> None:
    from matplotlib.ticker import MaxNLocator

    target = axes.yaxis if axis == "y" else axes.xaxis
    target.set_major_locator(MaxNLocator(integer=True))


@_styled
def daily_chart(days: Sequence[DayCount]) -> str | None:
    """Certificates issued and requests refused per day, side by side."""
    if not days:
        return None
    figure, axes = _figure(2.8)
    positions = list(range(len(days)))
    width = 0.4
    axes.bar(
        [p - width / 2 for p in positions], [d.issued for d in days], width, label="issued", color=ISSUED
    )
    axes.bar(
        [p + width / 2 for p in positions], [d.refused for d in days], width, label="refused", color=REFUSED
    )
    step = max(1, -(-len(days) // MAX_DATE_LABELS))
    axes.set_xticks(positions[::step], [d.day[5:] for d in days[::step]])
    axes.set_xlabel(f"day (UTC, month-day), {days[0].day[:4]}")
    axes.set_ylabel("per day")
    axes.grid(axis="y", color=GRID)
    _int_axis(axes, "y")
    axes.legend(frameon=False, ncols=2, loc="upper left")
    return _svg(figure, "chart-daily", "Certificates issued and requests refused per day")


@_styled
def namespace_chart(namespaces: Sequence[NamespaceSummary]) -> str | None:
    """Certificates issued in the period and live now, per namespace."""
    shown = [n for n in namespaces if n.issued]
    if not shown:
        return None
    figure, axes = _figure(0.9 + 0.42 * len(shown))
    positions = list(range(len(shown)))
    height = 0.38
    axes.barh(
        [p - height / 2 for p in positions], [n.issued for n in shown], height, label="issued", color=ISSUED
    )
    axes.barh(
        [p + height / 2 for p in positions], [n.live for n in shown], height, label="live now", color=LIVE
    )
    axes.set_yticks(positions, [n.namespace for n in shown])
    axes.invert_yaxis()
    axes.set_xlabel("certificates")
    axes.grid(axis="x", color=GRID)
    _int_axis(axes, "x")
    axes.legend(frameon=False, ncols=2, loc="lower right")
    return _svg(figure, "chart-namespaces", "Certificates issued and live now by namespace")


@_styled
def lifetime_chart(bars: Sequence[LifetimeBar], max_ttl: str) -> str | None:
    """Certificates per lifetime granted, those over the maximum in red, the maximum marked."""
    if not bars:
        return None
    figure, axes = _figure(2.8)
    positions = list(range(len(bars)))
    axes.bar(positions, [b.count for b in bars], 0.6, color=[OVER if b.over_max else WITHIN for b in bars])
    axes.set_xticks(positions, [b.label for b in bars])
    within = [p for p, b in zip(positions, bars, strict=True) if not b.over_max]
    edge = (within[-1] + 0.5) if within else -0.5
    axes.axvline(edge, color=OVER, linestyle="--", linewidth=1.2)
    axes.annotate(
        f"max TTL {max_ttl}",
        xy=(edge, 1),
        xycoords=("data", "axes fraction"),
        xytext=(4, -4),
        textcoords="offset points",
        va="top",
        color=OVER,
    )
    axes.set_xlim(-0.6, len(bars) - 0.4)
    axes.set_xlabel("lifetime granted at issuance")
    axes.set_ylabel("certificates")
    axes.grid(axis="y", color=GRID)
    _int_axis(axes, "y")
    return _svg(figure, "chart-lifetimes", f"Certificate lifetimes against the maximum of {max_ttl}")


@_styled
def refusal_chart(by_reason: Sequence[ReasonRefusals]) -> str | None:
    if not by_reason:
        return None
    figure, axes = _figure(0.9 + 0.36 * len(by_reason))
    positions = list(range(len(by_reason)))
    axes.barh(positions, [r.count for r in by_reason], 0.6, color=REFUSED)
    axes.set_yticks(positions, [r.reason for r in by_reason])
    axes.invert_yaxis()
    axes.set_xlabel("refused requests")
    axes.grid(axis="x", color=GRID)
    _int_axis(axes, "x")
    return _svg(figure, "chart-refusals", "Refused requests by reason")


def document_charts(document: ComplianceDocument) -> dict[str, str | None]:
    """Every chart of the document by its place in the template (None where there is no data)."""
    return {
        "daily": daily_chart(document.summary.days),
        "namespaces": namespace_chart(document.summary.namespaces),
        "lifetimes": lifetime_chart(document.lifetimes.bars, document.lifetimes.max_ttl),
        "refusals": refusal_chart(document.refusals.by_reason),
    }
