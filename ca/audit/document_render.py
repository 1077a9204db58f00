"""The compliance document as HTML or Markdown, through the Jinja2 templates shipped in
ca/audit/templates. Jinja2 (and, for HTML, matplotlib) are imported only here, when a document
is asked for.

HTML is autoescaped: every value from the ledger or a policy (free text an operator or a caller
wrote) is escaped; only the charts, which ca.audit.charts makes from numbers and fixed labels
and escapes itself, go in as markup. Markdown escapes table cells with the `cell` filter.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ca.audit.document import NO_NAMESPACE, ComplianceDocument
from ca.common.durations import format_duration

if TYPE_CHECKING:
    import jinja2

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "report.md.j2"
FINGERPRINT_SHOWN = 16


def when(stamp: str | None) -> str:
    """'2026-11-21T22:31:24.123456Z' -> '2026-11-21 22:31' (the documents say times are UTC)."""
    return stamp[:16].replace("T", " ") if stamp else "-"


def span(seconds: Any) -> str:
    return format_duration(timedelta(seconds=int(seconds))) if isinstance(seconds, int | float) else "-"


def fingerprint(value: str | None) -> str:
    """A SHA-256 fingerprint shortened for a table (the full one is in the keyring and ledger)."""
    if not value:
        return "-"
    return value if len(value) <= FINGERPRINT_SHOWN else value[:FINGERPRINT_SHOWN] + "…"


def markdown_cell(value: Any) -> str:
    """Text that stays inside one Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _environment(*, html: bool) -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ca.audit", "templates"),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=not html,
        lstrip_blocks=not html,
    )
    env.filters.update(when=when, span=span, fingerprint=fingerprint, cell=markdown_cell)
    return env


def render_html(document: ComplianceDocument) -> str:
    import markupsafe

    from ca.audit.charts import document_charts

    charts = {
        name: (markupsafe.Markup(svg) if svg else None) for name, svg in document_charts(document).items()
    }
    template = _environment(html=True).get_template(HTML_TEMPLATE)
    return template.render(document=document, charts=charts, no_namespace=NO_NAMESPACE)


def render_markdown(document: ComplianceDocument) -> str:
    template = _environment(html=False).get_template(MARKDOWN_TEMPLATE)
    # The template leaves blank lines generously around tables (two tables with none between
    # would read as one); one is enough.
    return re.sub(r"\n{3,}", "\n\n", template.render(document=document)).lstrip("\n")
