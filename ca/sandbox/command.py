"""`meshca up`: start the sandbox, show it live until Ctrl-C, then stop everything it started.

The order: the CA; a token per workload (`meshca token`); the agents and the demo apps; the
enforcers, callees first (each needs the inbound ports of those it calls); then each app is told
where to call. Any process that does not come up stops the whole start with its log's last lines.
On Ctrl-C (or SIGTERM, SIGHUP) every process is stopped (`Supervisor.stop`) and the sandbox
directory is removed unless it was given with --state-dir.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from ca.common.clock import Clock, SystemClock
from ca.common.files import atomic_write
from ca.sandbox.plan import (
    DEFAULT_POLICIES,
    CaPorts,
    EnforcerPorts,
    Layout,
    Plan,
    app_port,
    ca_ports,
    enforcer_ports,
    guide,
    meshed,
    start_order,
)
from ca.sandbox.poll import Endpoints, Poller
from ca.sandbox.settings import UpConfig
from ca.sandbox.supervisor import Supervisor
from ca.sandbox.view_model import Guide, Timeline, View, view

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live

REFRESH_S = 0.5
START_TIMEOUT_S = 60.0  # for each process to report its ports (a loaded machine starts Python slowly)
TOKEN_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class Started:
    ca: CaPorts
    endpoints: Endpoints
    inbound: Mapping[str, int]  # each meshed workload's enforcer inbound port


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: the sandbox sets every flag itself, so no MESHCA_* setting of
    the caller's applies; and `ca` is importable wherever this one was imported from."""
    env = {key: value for key, value in environ.items() if not key.startswith("MESHCA_")}
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, *[p for p in env.get("PYTHONPATH", "").split(":") if p]]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
    return env


def program_words(argv0: str) -> list[str]:
    """How the user ran meshca, to print commands they can paste: `meshca` as typed (a path
    included), or `python -m ca.cli`."""
    if Path(argv0).name == "meshca":
        return [argv0]
    return [sys.executable, "-m", "ca.cli"]


def prepare(layout: Layout) -> None:
    """The sandbox directory, ready to start in. A kept one keeps its CA, its edited policies and
    its logs; what the last run's processes held (tokens, certificates, where to call, ports) goes,
    so that nothing stale is read before the new processes write theirs."""
    layout.root.mkdir(parents=True, exist_ok=True)
    for stale in (layout.workloads, layout.run):
        shutil.rmtree(stale, ignore_errors=True)
    layout.policies.mkdir(parents=True, exist_ok=True)
    if not layout.policy_file.exists():
        atomic_write(layout.policy_file, DEFAULT_POLICIES.encode())


def start(plan: Plan, supervisor: Supervisor, say: Console) -> Started:
    ca_child = supervisor.start(plan.ca())
    ca = ca_ports(supervisor.ports(ca_child, START_TIMEOUT_S))
    say.print(f"CA listening on 127.0.0.1:{ca.grpc}; minting tokens, starting agents and apps")
    mesh = meshed(plan.workloads)
    tokens = [supervisor.start(plan.token(w)) for w in mesh]
    for token in tokens:
        supervisor.finish(token, TOKEN_TIMEOUT_S)
    agents = [supervisor.start(plan.agent(w, ca)) for w in mesh]
    apps = {w.name: supervisor.start(plan.app(w)) for w in plan.workloads}
    for agent in agents:
        supervisor.ports(agent, START_TIMEOUT_S)
    app_ports = {
        name: app_port(supervisor.ports(child, START_TIMEOUT_S), child.spec.name)
        for name, child in apps.items()
    }
    enforcers: dict[str, EnforcerPorts] = {}
    inbound: dict[str, int] = {}
    for workload in start_order(plan.workloads):
        say.print(f"starting {workload.name}'s enforcer (once its agent has its certificate)")
        child = supervisor.start(plan.enforcer(workload, app_ports[workload.name], inbound))
        ports = enforcer_ports(supervisor.ports(child, START_TIMEOUT_S), child.spec.name)
        enforcers[workload.name] = ports
        inbound[workload.name] = ports.inbound
    for workload in plan.workloads:
        calls = plan.calls(workload, enforcers.get(workload.name), inbound)
        atomic_write(plan.layout.calls_file(workload.name), json.dumps(calls).encode())
    return Started(
        ca=ca,
        endpoints=Endpoints(
            apps=app_ports, enforcer_metrics={name: ports.metrics for name, ports in enforcers.items()}
        ),
        inbound=inbound,
    )


class _Display(Protocol):
    def show(self, shown: View, new_events: Sequence[str]) -> None: ...


class _LiveScreen:
    """A terminal: the whole view, redrawn in place on the alternate screen."""

    def __init__(self, live: Live, guide: Guide) -> None:
        self._live = live
        self._guide = guide

    def show(self, shown: View, new_events: Sequence[str]) -> None:
        from ca.sandbox.screen import render

        self._live.update(render(shown, self._guide), refresh=True)


class _Lines:
    """Output that is not a terminal (a pipe, a file): the hints once, then each event as a line."""

    def __init__(self, console: Console, guide: Guide) -> None:
        self._console = console
        for what, how in guide.hints:
            console.print(f"{what}: {how}", soft_wrap=True)

    def show(self, shown: View, new_events: Sequence[str]) -> None:
        for event in new_events:
            self._console.print(event, soft_wrap=True)


@contextlib.contextmanager
def _display(console: Console, guide: Guide) -> Iterator[_Display]:
    if not console.is_terminal:
        yield _Lines(console, guide)
        return
    from rich.live import Live

    with Live(console=console, screen=True, auto_refresh=False) as live:
        yield _LiveScreen(live, guide)


def watch(
    plan: Plan, started: Started, supervisor: Supervisor, console: Console, clock: Clock, guide: Guide
) -> None:
    """Poll and show until interrupted."""
    poller = Poller(plan, started.endpoints, clock)
    timeline = Timeline()
    renew_before = plan.renew_before_expiry()
    with _display(console, guide) as display:
        while True:
            snapshot = poller.snapshot()
            exited = [
                timeline.note(snapshot.at, _exited(child.spec.name, child.process.returncode, child.spec.log))
                for child in supervisor.newly_exited()
            ]
            new_events = exited + timeline.observe(snapshot)
            display.show(view(snapshot, renew_before_expiry=renew_before, events=timeline.events), new_events)
            clock.sleep(REFRESH_S)


def _exited(name: str, status: int | None, log: Path) -> str:
    return f"{name} exited (status {status}); its log: {log}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) stop the sandbox as Ctrl-C does."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """While stopping: a second Ctrl-C must not leave the processes behind half stopped."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(cfg: UpConfig, environ: Mapping[str, str], argv0: str, clock: Clock | None = None) -> int:
    from rich.console import Console

    clock = clock or SystemClock()
    console = Console(highlight=False)
    kept = cfg.state_dir is not None
    root = (
        cfg.state_dir.resolve() if cfg.state_dir is not None else Path(tempfile.mkdtemp(prefix="meshca-up-"))
    )
    layout = Layout(root)
    plan = Plan(
        layout=layout,
        meshca=(sys.executable, "-m", "ca.cli"),
        python=sys.executable,
        cert_ttl=cfg.cert_ttl,
        call_interval=cfg.call_interval,
    )
    supervisor = Supervisor(child_environment(environ), clock)
    try:
        with _stop_signals_interrupt():
            prepare(layout)
            console.print(f"meshca up: sandbox in {root}; Ctrl-C stops it")
            started = start(plan, supervisor, console)
            shown = guide(
                plan,
                program=program_words(argv0),
                ca=started.ca,
                inbound=started.inbound,
                processes=len(supervisor.running()),
                kept=kept,
            )
            watch(plan, started, supervisor, console, clock, shown)
    except KeyboardInterrupt:
        pass
    finally:
        with _signals_ignored():
            _stop(supervisor, console, root, kept)
    return 0


def _stop(supervisor: Supervisor, console: Console, root: Path, kept: bool) -> None:
    _say(console, f"stopping the {len(supervisor.running())} processes meshca up started")
    stopped = supervisor.stop()
    if not kept:
        shutil.rmtree(root, ignore_errors=True)
    killed = f", {stopped.killed} killed after the grace period" if stopped.killed else ""
    left = f"kept {root}" if kept else f"removed {root}"
    _say(console, f"stopped {stopped.terminated} processes{killed}; {left}")


def _say(console: Console, text: str) -> None:
    """A line that must not stop the stopping: after SIGHUP the terminal may be gone (EIO)."""
    with contextlib.suppress(OSError):
        console.print(text)
