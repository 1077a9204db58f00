from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.common.clock import SystemClock
from ca.errors import UnavailableError
from ca.sandbox.plan import ProcessSpec
from ca.sandbox.supervisor import Supervisor

SLEEP = "import time; time.sleep(120)"
# Ignores SIGTERM and starts a grandchild that ignores it too: only SIGKILL to the group ends both.
STUBBORN = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(120)']); "
    "time.sleep(120)"
)


def spec(tmp_path: Path, name: str, code: str, *, ports: bool = False) -> ProcessSpec:
    return ProcessSpec(
        name=name,
        argv=(sys.executable, "-c", code),
        log=tmp_path / "logs" / f"{name}.log",
        ports_file=tmp_path / "run" / f"{name}.json" if ports else None,
    )


def group_members(group: int) -> list[int]:
    """The group's processes, zombies aside (an orphan that exited waits for init to reap it)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == group:
                members.append(int(entry.name))
    return members


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    running = Supervisor(dict(os.environ), SystemClock())
    yield running
    running.stop(grace_s=0)


def test_children_share_a_group_of_their_own_and_stop_on_sigterm(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    first = supervisor.start(spec(tmp_path, "one", SLEEP))
    supervisor.start(spec(tmp_path, "two", SLEEP))
    group = supervisor.process_group
    assert group == first.pid != os.getpgid(0)
    assert sorted(group_members(group)) == sorted(c.pid for c in supervisor.children)
    stopped = supervisor.stop()
    assert (stopped.terminated, stopped.killed) == (2, 0)
    assert all(c.process.returncode is not None for c in supervisor.children)
    assert group_members(group) == []


def test_what_ignores_sigterm_is_killed_grandchildren_included(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    child = supervisor.start(spec(tmp_path, "stubborn", STUBBORN))
    deadline = time.monotonic() + 30
    while not (tmp_path / "logs" / "stubborn.log").read_text():  # the grandchild ignores SIGTERM now
        assert time.monotonic() < deadline and child.process.poll() is None
        time.sleep(0.01)
    group = child.pid
    assert len(group_members(group)) == 2
    stopped = supervisor.stop(grace_s=0.5)
    assert (stopped.terminated, stopped.killed) == (0, 1)
    assert group_members(group) == []


def test_ports_are_read_once_written(supervisor: Supervisor, tmp_path: Path) -> None:
    ports_file = tmp_path / "run" / "app.json"
    write = f"pathlib.Path({str(ports_file)!r}).write_text(json.dumps({{'http': 1234}}))"
    code = f"import json, pathlib, time; {write}; time.sleep(120)"
    child = supervisor.start(spec(tmp_path, "app", code, ports=True))
    assert supervisor.ports(child, 30) == {"http": 1234}


def test_a_stale_ports_file_is_not_taken_for_a_new_one(supervisor: Supervisor, tmp_path: Path) -> None:
    stale = tmp_path / "run" / "app.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"http": 1}')
    child = supervisor.start(spec(tmp_path, "app", "import sys; sys.exit(3)", ports=True))
    with pytest.raises(UnavailableError, match="app exited at start"):
        supervisor.ports(child, 30)


def test_a_process_that_exits_at_start_is_reported_with_its_log(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    code = "import sys; print('meshca: error: port in use', file=sys.stderr); sys.exit(2)"
    child = supervisor.start(spec(tmp_path, "ca", code, ports=True))
    with pytest.raises(UnavailableError, match=r"ca exited at start \(exit 2\):\nmeshca: error: port in use"):
        supervisor.ports(child, 30)
    assert supervisor.newly_exited() == []  # already reported


def test_a_command_that_fails_is_reported(supervisor: Supervisor, tmp_path: Path) -> None:
    child = supervisor.start(
        spec(tmp_path, "token", "import sys; print('no state', file=sys.stderr); sys.exit(1)")
    )
    with pytest.raises(UnavailableError, match=r"token failed \(exit 1\):\nno state"):
        supervisor.finish(child, 30)


def test_a_command_keeps_its_output_apart_from_its_log(supervisor: Supervisor, tmp_path: Path) -> None:
    token = tmp_path / "token"
    code = "import sys; print('eyJ.token'); print('minted', file=sys.stderr)"
    child = supervisor.start(
        ProcessSpec(name="t", argv=(sys.executable, "-c", code), log=tmp_path / "t.log", stdout=token)
    )
    supervisor.finish(child, 30)
    assert token.read_text() == "eyJ.token\n"
    assert (tmp_path / "t.log").read_text() == "minted\n"


def test_a_process_that_exits_later_is_reported_once(supervisor: Supervisor, tmp_path: Path) -> None:
    child = supervisor.start(spec(tmp_path, "app", "pass"))
    child.process.wait(30)
    assert supervisor.newly_exited() == [child]
    assert supervisor.newly_exited() == []
