"""The document's charts: matplotlib's SVG made fit to sit in a page (no prolog, doctype,
metadata or fixed size; ids prefixed per chart), the same bytes for the same model, and no
chart where there is nothing to draw."""

from __future__ import annotations

import re
import sys

import pytest

from ca.audit import charts
from ca.audit.document import LifetimeBar, NamespaceSummary, ReasonRefusals
from ca.ledger.compliance import DayCount

MATPLOTLIB_SVG = """<?xml version="1.0" encoding="utf-8" standalone="no"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"
  "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">
<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="432pt" height="216pt" viewBox="0 0 432 216" \
xmlns="http://www.w3.org/2000/svg" version="1.1">
 <metadata>
  <rdf:RDF xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Matplotlib, https://matplotlib.org/</dc:title></rdf:RDF>
 </metadata>
 <defs>
  <style type="text/css">*{stroke-linejoin: round; stroke-linecap: butt}</style>
 </defs>
 <g id="figure_1">
  <path d="M 0 0" clip-path="url(#p1a)"/>
  <use xlink:href="#m2b" x="1"/>
 </g>
 <defs><clipPath id="p1a"><rect/></clipPath><path id="m2b" d="M 0 0"/></defs>
</svg>
"""


def test_an_svg_document_becomes_an_inline_element() -> None:
    svg = charts.inline_svg(MATPLOTLIB_SVG, "chart-x", 'Issued & "refused"')
    assert svg.startswith("<svg ")
    assert "<?xml" not in svg and "DOCTYPE" not in svg and "<metadata" not in svg
    assert "http://purl.org" not in svg and "matplotlib.org" not in svg
    head = svg[: svg.index(">")]
    assert 'width="' not in head and 'height="' not in head and 'viewBox="0 0 432 216"' in head
    assert 'id="chart-x" class="chart" role="img" aria-label="Issued &amp; &quot;refused&quot;"' in head
    assert re.findall(r'\bid="([^"]+)"', svg) == ["chart-x", "chart-x-figure_1", "chart-x-p1a", "chart-x-m2b"]
    assert 'clip-path="url(#chart-x-p1a)"' in svg and 'xlink:href="#chart-x-m2b"' in svg
    assert "#chart-x *{stroke-linejoin" in svg  # matplotlib's `*` rule kept to this chart


DAYS = (DayCount(day="2026-11-14", issued=3, refused=1), DayCount(day="2026-11-15", issued=5))


def test_a_chart_is_the_same_bytes_every_time() -> None:
    first = charts.daily_chart(DAYS)
    assert first is not None
    assert charts.daily_chart(DAYS) == first
    assert "chart-daily-" in first
    assert "<text" in first  # text as text: no glyph outlines, no font file


def test_charts_with_nothing_to_draw_are_left_out() -> None:
    assert charts.daily_chart(()) is None
    assert (
        charts.namespace_chart(
            [NamespaceSummary(namespace="a", identities=0, identities_live=0, issued=0, live=0, refused=3)]
        )
        is None
    )
    assert charts.lifetime_chart((), "1d") is None
    assert charts.refusal_chart(()) is None


@pytest.mark.parametrize(
    "bars",
    [
        (LifetimeBar(label="1h", count=2, over_max=False),),
        (LifetimeBar(label="2d", count=2, over_max=True),),
        (LifetimeBar(label="1h", count=2, over_max=False), LifetimeBar(label="2d", count=1, over_max=True)),
    ],
)
def test_the_lifetime_chart_marks_the_maximum(bars: tuple[LifetimeBar, ...]) -> None:
    svg = charts.lifetime_chart(bars, "1d")
    assert svg is not None and "max TTL 1d" in svg
    assert svg.count("fill: #2563eb") == sum(1 for b in bars if not b.over_max)
    assert svg.count("fill: #dc2626") == sum(1 for b in bars if b.over_max) + 1  # and the label


def test_pyplot_stays_unimported() -> None:
    charts.refusal_chart((ReasonRefusals(reason="token_expired", count=4, top_callers=()),))
    assert "matplotlib.pyplot" not in sys.modules
