from __future__ import annotations

from rich.console import Console

from ca.sandbox.screen import render
from ca.sandbox.view_model import CallRow, Guide, View, WorkloadRow

WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"


def shown(view: View) -> str:
    console = Console(width=200, record=True, color_system=None)
    guide = Guide(
        header="meshca up: CA on 127.0.0.1:1", hints=(("rotate every certificate", "meshca rotate --x"),)
    )
    console.print(render(view, guide))
    return console.export_text()


def test_the_view_shows_rows_calls_events_and_hints() -> None:
    view = View(
        workloads=(
            WorkloadRow(
                name="web",
                identity=WEB_ID,
                serial="abababababab…",
                expires_in="3m05s",
                renews_in="1m05s",
                mode="STRICT (demo/web)",
                accepted="4 mTLS",
                refused="2 plaintext",
            ),
        ),
        calls=(CallRow(caller="legacy", callee="web", ok=3, failed=2, outcome="failing", detail="reset"),),
        events=("14:00:00  web: PeerAuthentication PERMISSIVE -> STRICT",),
        problem=None,
    )
    lines = shown(view).splitlines()
    assert lines[0] == "meshca up: CA on 127.0.0.1:1"
    row = next(line for line in lines if line.lstrip().startswith("web "))
    for cell in (WEB_ID, "abababababab…", "3m05s", "1m05s", "STRICT (demo/web)", "4 mTLS", "2 plaintext"):
        assert cell in row
    call = next(line for line in lines if "legacy -> web" in line)
    assert call.split() == ["legacy", "->", "web", "3", "2", "failing", "reset"]
    assert "14:00:00  web: PeerAuthentication PERMISSIVE -> STRICT" in lines
    assert any(line.startswith("rotate every certificate  meshca rotate --x") for line in lines)


def test_refused_policy_files_are_said() -> None:
    text = shown(View(workloads=(), calls=(), events=(), problem="demo.yaml: bad mode"))
    assert "policy files refused, the enforcers keep the last good: demo.yaml: bad mode" in text
