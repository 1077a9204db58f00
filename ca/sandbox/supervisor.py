"""The sandbox's processes: started in one process group of their own, stopped together.

The group is not the terminal's foreground group, so Ctrl-C reaches `meshca up` alone and it
stops the others in order: SIGTERM to the whole group (grandchildren too, such as the CA's ledger
process), a wait, SIGKILL to whatever is left, and a wait for every child it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.common.clock import Clock
from ca.errors import UnavailableError
from ca.sandbox.plan import ProcessSpec

STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
KILL_WAIT_S = 5.0
POLL_S = 0.05
LOG_TAIL_LINES = 5


@dataclass
class Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    reported_exit: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True, kw_only=True)
class Stopped:
    """How the processes ended: stopped by SIGTERM, or killed after the grace period."""

    terminated: int
    killed: int


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. An orphaned grandchild that has exited stays a
    zombie until init reaps it, which some container inits do late: where /proc tells, zombies
    do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: it is still there
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    return any(_running_member(entry, pgid) for entry in proc.iterdir() if entry.name.isdigit())


def _running_member(entry: Path, pgid: int) -> bool:
    try:
        text = (entry / "stat").read_text()
    except OSError:
        return False  # gone while we looked
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return fields[0] != "Z" and int(fields[2]) == pgid


class Supervisor:
    def __init__(self, environ: Mapping[str, str], clock: Clock) -> None:
        self._environ = dict(environ)
        self._clock = clock
        self._children: list[Child] = []
        self._pgid: int | None = None

    @property
    def children(self) -> tuple[Child, ...]:
        return tuple(self._children)

    def running(self) -> list[Child]:
        return [c for c in self._children if c.process.poll() is None]

    @property
    def process_group(self) -> int | None:
        return self._pgid

    def start(self, spec: ProcessSpec) -> Child:
        """Start `spec` in the sandbox's process group, its output appended to its log."""
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        if spec.ports_file is not None:
            spec.ports_file.parent.mkdir(parents=True, exist_ok=True)
            spec.ports_file.unlink(missing_ok=True)  # one left by a run that was killed
        stdout_target = spec.stdout if spec.stdout is not None else spec.log
        stdout_target.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "ab") as log_file, open(stdout_target, "wb" if spec.stdout else "ab") as out:
            process = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log_file,
                env=self._environ,
                process_group=0 if self._pgid is None else self._pgid,
            )
        if self._pgid is None:
            self._pgid = process.pid
        child = Child(spec=spec, process=process)
        self._children.append(child)
        return child

    def finish(self, child: Child, timeout_s: float) -> None:
        """Wait for `child`, a command that runs to completion, to exit 0."""
        spec = child.spec
        try:
            code = child.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise UnavailableError(
                f"{spec.name} did not finish in {timeout_s:.0f}s:\n{log_tail(spec.log)}"
            ) from None
        child.reported_exit = True
        if code != 0:
            raise UnavailableError(f"{spec.name} failed (exit {code}):\n{log_tail(spec.log)}")

    def ports(self, child: Child, timeout_s: float) -> dict[str, Any]:
        """The ports file `child` writes once it listens; UnavailableError if it exits first or
        does not write it within `timeout_s`."""
        spec = child.spec
        assert spec.ports_file is not None
        deadline = self._clock.monotonic() + timeout_s
        while True:
            document = _read_json(spec.ports_file)
            if document is not None:
                return document
            code = child.process.poll()
            if code is not None:
                child.reported_exit = True
                raise UnavailableError(f"{spec.name} exited at start (exit {code}):\n{log_tail(spec.log)}")
            if self._clock.monotonic() >= deadline:
                raise UnavailableError(
                    f"{spec.name} did not report its ports within {timeout_s:.0f}s:\n{log_tail(spec.log)}"
                )
            self._clock.sleep(POLL_S)

    def newly_exited(self) -> list[Child]:
        """Long-running children that have exited since the last call."""
        exited = []
        for child in self._children:
            if not child.reported_exit and child.process.poll() is not None:
                child.reported_exit = True
                exited.append(child)
        return exited

    def stop(self, grace_s: float = STOP_GRACE_S) -> Stopped:
        """SIGTERM to the group; SIGKILL to what is left after `grace_s`; every child waited for."""
        pgid = self._pgid
        if pgid is None:
            return Stopped(terminated=0, killed=0)
        running = self.running()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = self._clock.monotonic() + grace_s
        while _group_alive(pgid) and self._clock.monotonic() < deadline:
            self._reap()
            self._clock.sleep(POLL_S)
        killed = 0
        if _group_alive(pgid):
            killed = sum(1 for c in self._children if c.process.poll() is None)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(KILL_WAIT_S)
        return Stopped(terminated=len(running) - killed, killed=killed)

    def _reap(self) -> None:
        for child in self._children:
            child.process.poll()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet (ports files are written whole, by rename)
    return document if isinstance(document, dict) else None
