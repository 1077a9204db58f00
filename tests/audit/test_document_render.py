"""The compliance document as HTML and Markdown: self-contained HTML (nothing fetched from
anywhere: no outside src or href, no @import, no url() but to its own ids), every section there,
ids unique across the charts, text from the ledger escaped; Markdown tables that hold together."""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser

import pytest

from ca.audit import document_render
from ca.audit.document import ComplianceDocument
from ca.ledger.store import sqlite_url
from tests.audit.test_document import build, config
from tests.support.compliance_mesh import ComplianceMesh, write_mesh

SECTIONS = ("summary", "lifetimes", "refusals", "rotations", "ca", "coverage", "evidence")
FETCHING = ("src", "href", "xlink:href", "srcset", "poster", "data", "action", "background")
HOSTILE = '<script>alert("x")</script> | a </td><img src="http://example.com/x.png">'


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> ComplianceMesh:
    directory = tmp_path_factory.mktemp("mesh")
    return write_mesh(
        sqlite_url(directory / "state" / "ledger.db"), directory / "state", directory / "policies"
    )


@pytest.fixture(scope="module")
def document(mesh: ComplianceMesh) -> ComplianceDocument:
    built = build(config(mesh))
    # An operator's free text, as an order's reason, that would break out of a table or page.
    (order,) = built.rotations.orders
    hostile = dataclasses.replace(order, reason=HOSTILE)
    return dataclasses.replace(built, rotations=dataclasses.replace(built.rotations, orders=(hostile,)))


@pytest.fixture(scope="module")
def html(document: ComplianceDocument) -> str:
    return document_render.render_html(document)


class Collected(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def external_references(page: str) -> list[str]:
    """Every reference in the page that would make a browser fetch something."""
    parsed = Collected()
    parsed.feed(page)
    found = []
    for tag, name, value in parsed.attributes:
        if name in FETCHING and not value.startswith("#"):
            found.append(f"<{tag} {name}={value!r}>")
        if name == "style":
            parsed.styles.append(value)
    for css in parsed.styles:
        found += re.findall(r"@import[^;]*", css)
        found += [u for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", css) if not u.startswith("#")]
    found += [u for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", page) if not u.startswith("#")]
    found += re.findall(r"<link\b[^>]*>", page)
    found += re.findall(r"<(?:script|iframe|object|embed)\b[^>]*>", page)
    return found


def test_the_page_references_nothing_outside_it(html: str) -> None:
    assert external_references(html) == []
    assert not re.search(r"(src|href)\s*=\s*['\"]?https?://", html)
    assert "@import" not in html and "@font-face" not in html


def test_the_checker_finds_what_it_looks_for() -> None:
    page = (
        '<link rel="stylesheet" href="https://cdn.example/x.css"><img src="http://a/b.png">'
        "<style>@import 'x.css'; body { background: url(https://a/c.png) }</style>"
        '<svg><use xlink:href="#ok"/><path clip-path="url(#ok)"/></svg><script src="/app.js"></script>'
    )
    assert len(external_references(page)) >= 5
    assert not any("#ok" in found for found in external_references(page))


def test_every_section_and_chart_is_there(html: str) -> None:
    for section in SECTIONS:
        assert f'<section class="part" id="{section}">' in html
    for chart in ("chart-daily", "chart-namespaces", "chart-lifetimes", "chart-refusals"):
        assert f'id="{chart}" class="chart" role="img"' in html


def test_ids_are_unique_across_the_page(html: str) -> None:
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)) > 50


def test_text_from_the_ledger_is_escaped(html: str) -> None:
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<script" not in html


def test_print_rules_put_each_section_on_a_page(html: str) -> None:
    assert "@media print" in html and "@page" in html
    assert re.search(r"section\.part \{ break-before: page;", html)


def test_the_same_document_renders_to_the_same_bytes(document: ComplianceDocument, html: str) -> None:
    assert document_render.render_html(document) == html


def test_markdown_tables_hold_together(document: ComplianceDocument) -> None:
    text = document_render.render_markdown(document)
    assert text.startswith("# meshca compliance report\n")
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|---"):
            header = lines[index - 1]
            assert index < 2 or not lines[index - 2].startswith("|"), f"two tables run together at {header}"
            columns = header.count(" | ")
            for row in lines[index + 1 :]:
                if not row.startswith("|"):
                    break
                assert re.sub(r"\\\|", "", row).count(" | ") == columns, row
    assert "\\| a" in text  # the hostile reason's pipe is escaped, not a new column
    assert "## 7. Evidence" in text and "meshca audit verify --ledger sqlite:///" in text


def test_markdown_cells() -> None:
    assert document_render.markdown_cell("a|b\nc") == "a\\|b c"
    assert document_render.when("2026-11-21T22:31:24.123456Z") == "2026-11-21 22:31"
    assert document_render.fingerprint("ab" * 32) == "abababababababab…"
