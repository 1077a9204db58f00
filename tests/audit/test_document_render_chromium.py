"""The HTML compliance report in a real browser: headless Chromium (Debian's package) opens the
file, every section renders with height in the DOM, the charts are drawn, and the page logs no
console error and asks the network for nothing (the only request is the file itself). A page
that does fetch something or throws is caught by the same probe, so the check can fail.

Skips where Chromium is missing, fails under CI (tests/support/chromium.require_chromium)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ca.audit import document_render
from ca.ledger.store import sqlite_url
from tests.audit.test_document import build, config
from tests.audit.test_document_render import SECTIONS
from tests.support.chromium import Browser, require_chromium
from tests.support.compliance_mesh import write_mesh

pytestmark = pytest.mark.slow

ERROR_EVENTS = ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    binary = require_chromium()
    opened = Browser(binary, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            opened.call(f"{domain}.enable")
        yield opened
    finally:
        opened.close()


def load(browser: Browser, page: Path) -> None:
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for(lambda event: event["method"] == "Page.loadEventFired")
    browser.evaluate("document.fonts.ready.then(() => true)")


def requests(browser: Browser) -> list[str]:
    return [
        e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"
    ]


def problems(browser: Browser) -> list[dict[str, Any]]:
    found = []
    for event in browser.events:
        if event["method"] not in ERROR_EVENTS:
            continue
        params = event["params"]
        level = params.get("entry", {}).get("level") or params.get("type")
        if event["method"] == "Runtime.exceptionThrown" or level in ("error", "warning", "assert"):
            found.append(event)
    return found


def test_the_report_renders_with_no_error_and_no_request(browser: Browser, tmp_path: Path) -> None:
    state = tmp_path / "state"
    mesh = write_mesh(sqlite_url(state / "ledger.db"), state, tmp_path / "policies")
    page = tmp_path / "report.html"
    page.write_text(document_render.render_html(build(config(mesh))))
    load(browser, page)
    rendered = browser.evaluate(
        """const box = e => e.getBoundingClientRect();
        JSON.stringify({
          sections: [...document.querySelectorAll('section.part')].map(s => [s.id, box(s).height]),
          charts: [...document.querySelectorAll('svg.chart')].map(s => [s.id, box(s).width, box(s).height]),
          flagged: document.querySelectorAll('#coverage tr.bad').length,
          title: document.title,
        })"""
    )
    found = json.loads(rendered)
    assert [s[0] for s in found["sections"]] == list(SECTIONS)
    assert all(height > 100 for _, height in found["sections"]), found["sections"]
    assert [c[0] for c in found["charts"]] == [
        "chart-daily",
        "chart-namespaces",
        "chart-lifetimes",
        "chart-refusals",
    ]
    assert all(width > 500 and height > 100 for _, width, height in found["charts"]), found["charts"]
    assert found["flagged"] >= 3  # legacy's two identities and its PERMISSIVE namespace row
    assert found["title"].startswith("meshca compliance report")
    assert problems(browser) == []
    assert requests(browser) == [page.as_uri()]


def test_the_probe_sees_a_fetch_and_an_error(browser: Browser, tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>t</title></head><body><img src="http://127.0.0.1:9/x.png">'
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    load(browser, page)
    assert "http://127.0.0.1:9/x.png" in requests(browser)
    assert {e["method"] for e in problems(browser)} >= {"Runtime.exceptionThrown", "Runtime.consoleAPICalled"}
