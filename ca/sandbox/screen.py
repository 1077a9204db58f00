"""The sandbox's view drawn with rich: a header, the workloads, the calls, recent events and hints."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ca.sandbox.view_model import Guide, View

MODE_STYLES = {"STRICT": "green", "PERMISSIVE": "yellow", "DISABLE": "red"}
OUTCOME_STYLES = {"ok": "green", "failing": "bold red"}


def _workloads(view: View) -> Table:
    table = Table(title="workloads", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("workload", "identity (SPIFFE ID)", "serial", "expires in", "renews in"):
        table.add_column(header, no_wrap=True)
    table.add_column("PeerAuthentication", no_wrap=True)
    table.add_column("inbound accepted", overflow="ellipsis", no_wrap=True)
    table.add_column("refused", overflow="ellipsis", no_wrap=True, style="red")
    for row in view.workloads:
        mode = Text(row.mode, style=MODE_STYLES.get(row.mode.split(" ")[0], ""))
        table.add_row(
            row.name, row.identity, row.serial, row.expires_in, row.renews_in, mode, row.accepted, row.refused
        )
    return table


def _calls(view: View) -> Table:
    table = Table(title="calls", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("caller -> callee", no_wrap=True)
    table.add_column("answered", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("now", no_wrap=True)
    table.add_column("last", overflow="ellipsis", no_wrap=True)
    for row in view.calls:
        table.add_row(
            f"{row.caller} -> {row.callee}",
            str(row.ok),
            str(row.failed),
            Text(row.outcome, style=OUTCOME_STYLES.get(row.outcome, "")),
            row.detail,
        )
    return table


def _events(view: View) -> RenderableType:
    lines = [Text("events", style="italic")]
    lines += [Text(event, overflow="ellipsis", no_wrap=True) for event in view.events] or [Text("-")]
    return Group(*lines)


def _hints(guide: Guide) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for what, how in guide.hints:
        table.add_row(what, how)
    return table


def render(view: View, guide: Guide) -> RenderableType:
    parts: list[RenderableType] = [Text(guide.header, style="bold"), _workloads(view), _calls(view)]
    if view.problem:
        parts.append(
            Text(f"policy files refused, the enforcers keep the last good: {view.problem}", style="red")
        )
    parts += [_events(view), Text(""), _hints(guide)]
    return Group(*parts)
