"""`meshca up` end to end, as a person sees it: on a pseudo-terminal, its screen read back.

The sandbox comes up with three workloads calling each other over mutual TLS; the `meshca rotate`
command it prints, typed from "another terminal", gives every workload a new serial on screen; an
edit of its policy file makes web STRICT and the plaintext caller's refusals appear; Ctrl-C
stops every process it started (its whole process group, grandchildren included) and removes
its temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from ca.sandbox.command import child_environment, prepare, program_words
from ca.sandbox.plan import DEFAULT_POLICIES, Layout
from tests.support.terminal import Terminal

ROWS, COLUMNS = 60, 260
START_S = 120.0  # a 2-core machine shared with other tests starts 14 Python processes slowly
CHANGE_S = 30.0
MESHED = ("web", "api", "db")
SERIAL = re.compile(r"\b([0-9a-f]{12})…")


def _environment(tmp: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MESHCA_") and k not in ("COLUMNS", "LINES")
    }
    env.update(TERM="xterm-256color", TMPDIR=str(tmp))
    env.pop("NO_COLOR", None)
    return env


def _row(screen: str, name: str) -> str:
    """The workloads table's row of `name`."""
    for line in screen.splitlines():
        if re.match(rf"\s*{name}\s+(spiffe://|none:|waiting)", line):
            return line
    return ""


def _serials(screen: str) -> dict[str, str]:
    found = {}
    for name in MESHED:
        match = SERIAL.search(_row(screen, name))
        if match:
            found[name] = match.group(1)
    return found


def _call(screen: str, caller: str, callee: str) -> str:
    for line in screen.splitlines():
        if re.match(rf"\s*{caller} -> {callee}\s+\d", line):
            return line
    return ""


def _all_up(screen: str) -> bool:
    identities = all(f"spiffe://cluster.local/ns/demo/sa/{n}" in _row(screen, n) for n in MESHED)
    calls = [("web", "api"), ("web", "db"), ("api", "db"), ("legacy", "web")]
    return identities and len(_serials(screen)) == 3 and all(" ok " in _call(screen, *c) for c in calls)


def _hint(screen: str, label: str) -> str:
    for line in screen.splitlines():
        if line.startswith(label):
            return line[len(label) :].strip()
    raise AssertionError(f"no {label!r} line on screen:\n{screen}")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a running process; None once it has exited (a zombie that
    init has not reaped yet included)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[2]))


def _in_group(pid: int, group: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == group


def _processes() -> dict[int, tuple[int, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def _group_of_children(parent: int) -> int:
    groups = {group for ppid, group in _processes().values() if ppid == parent}
    assert len(groups) == 1, f"the sandbox's children should share one process group, not {groups}"
    return groups.pop()


def _members(group: int) -> list[int]:
    return [pid for pid, (_, pgid) in _processes().items() if pgid == group]


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    argv = [sys.executable, "-m", "ca.cli", "up", "--call-interval", "200ms"]
    term = Terminal(argv, _environment(tmp_path), rows=ROWS, columns=COLUMNS)
    try:
        yield term
    finally:
        group = None
        with contextlib.suppress(AssertionError):
            group = _group_of_children(term.pid)
        term.close()
        if group is not None:  # a test that failed while meshca up ran: leave no process behind
            _kill_group(group)


@pytest.mark.slow
def test_up_shows_the_mesh_follows_rotation_and_policy_and_leaves_nothing(
    terminal: Terminal, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    screen = terminal.wait_for(
        _all_up, START_S, "three workloads with identities, serials and answered calls"
    )
    for caller, callee in [("web", "api"), ("web", "db"), ("api", "db")]:
        assert f"seen as spiffe://cluster.local/ns/demo/sa/{caller}" in _call(screen, caller, callee)
    assert "seen as no identity (plaintext)" in _call(screen, "legacy", "web")
    assert "PERMISSIVE (demo/web)" in _row(screen, "web")
    assert "STRICT (demo/db)" in _row(screen, "db")

    rotate = shlex.split(_hint(screen, "rotate every certificate"))
    root = Path(rotate[rotate.index("--state-dir") + 1]).parent
    assert root.parent == tmp_path and root.name.startswith("meshca-up-")
    before = _serials(screen)
    for name in MESHED:  # the serial on screen is the agent's certificate's
        leaf = x509.load_pem_x509_certificate(
            (root / "workloads" / name / "certs" / "cert-chain.pem").read_bytes()
        )
        assert format(leaf.serial_number, "x").startswith(before[name])

    # From "another terminal": the exact command the view shows.
    ordered = subprocess.run(rotate, env=_environment(tmp_path), capture_output=True, text=True, timeout=60)
    assert ordered.returncode == 0, ordered.stderr
    screen = terminal.wait_for(
        lambda s: len(_serials(s)) == 3 and all(_serials(s)[n] != before[n] for n in MESHED),
        CHANGE_S,
        f"every serial changed from {before}",
    )
    assert "web: new certificate" in screen

    policy = root / "policies" / "demo.yaml"
    text = policy.read_text()
    assert text.count("mode: PERMISSIVE") == 1
    policy.write_text(text.replace("mode: PERMISSIVE", "mode: STRICT"))
    screen = terminal.wait_for(
        lambda s: (
            "STRICT (demo/web)" in _row(s, "web")
            and "failing" in _call(s, "legacy", "web")
            and "plaintext" in _row(s, "web").split("STRICT (demo/web)")[1]
        ),
        CHANGE_S,
        "web STRICT, legacy's plaintext calls refused by web's enforcer",
    )
    assert "web: PeerAuthentication PERMISSIVE -> STRICT" in screen
    assert " ok " in _call(screen, "web", "api")  # mutual TLS still passes

    group = _group_of_children(terminal.pid)
    request.addfinalizer(lambda: _kill_group(group))  # if meshca up leaves its processes behind
    started = _members(group)
    assert len(started) >= 11  # CA, its ledger process, 3 agents, 3 enforcers, 4 apps

    terminal.type(b"\x03")  # Ctrl-C, through the terminal
    assert terminal.wait(60) == 0
    assert _members(group) == []
    assert not any(_in_group(pid, group) for pid in started)
    assert not root.exists()
    assert list(tmp_path.glob("meshca-up-*")) == []
    assert f"removed {root}" in terminal.output()


def test_a_kept_sandbox_keeps_its_ca_and_policies_and_drops_what_the_last_processes_held(
    tmp_path: Path,
) -> None:
    layout = Layout(tmp_path / "sb")
    prepare(layout)
    assert layout.policy_file.read_text() == DEFAULT_POLICIES
    edited = DEFAULT_POLICIES.replace("mode: PERMISSIVE", "mode: STRICT")
    layout.policy_file.write_text(edited)
    (layout.ca_state).mkdir()
    (layout.ca_root_cert).write_text("root")
    for stale in (layout.calls_file("web"), layout.token("web"), layout.ports_file("web-app")):
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("{}")
    prepare(layout)
    assert layout.policy_file.read_text() == edited
    assert layout.ca_root_cert.read_text() == "root"
    assert not layout.calls_file("web").exists() and not layout.token("web").exists()
    assert not layout.ports_file("web-app").exists()


def test_the_children_get_no_meshca_setting_and_can_import_meshca() -> None:
    env = child_environment({"MESHCA_STATE_DIR": "/elsewhere", "PATH": "/bin", "PYTHONPATH": "/extra"})
    assert "MESHCA_STATE_DIR" not in env and env["PATH"] == "/bin"
    root = str(Path(__file__).resolve().parents[2])
    assert env["PYTHONPATH"].split(":") == [root, "/extra"]


def test_commands_to_paste_name_meshca_as_it_was_run() -> None:
    assert program_words(".venv/bin/meshca") == [".venv/bin/meshca"]
    assert program_words("/x/ca/cli/__main__.py") == [sys.executable, "-m", "ca.cli"]
