"""Progress of `meshca audit verify` and `export`: drawn on a terminal, absent from pipes.

The ledger (12,500 entries, more than one progress interval) is written straight through
LedgerStore.append and signed as a CA leaves it. The commands run as child processes
with stderr on a pseudo-terminal (os.openpty) or on a pipe; stdout always goes to a
file, so the two runs' output can be compared byte for byte.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca.common.progress import PROGRESS_EVERY
from ca.ledger import queries
from ca.ledger.audit_filter import AuditFilter
from ca.ledger.entries import refused_content
from ca.ledger.ledger import HEAD_FILE, KEY_FILE, HeadFile, Ledger, load_or_create_ledger_key
from ca.ledger.reader import open_reader
from ca.ledger.store import LedgerStore, sqlite_url
from tests.support.clock import FakeClock

ENTRIES = PROGRESS_EVERY + 2_500
NAMESPACES = 5
START = datetime(2026, 3, 1, tzinfo=UTC)
MESHCA = [sys.executable, "-m", "ca.cli", "audit"]
RUN_TIMEOUT_S = 120


def write_ledger(state: Path, count: int) -> None:
    """A signed ledger of `count` refusals, one a second from START, in NAMESPACES namespaces."""
    state.mkdir(parents=True)
    url = sqlite_url(state / "ledger.db")
    store = LedgerStore(url)
    store.migrate()
    batch = 5_000
    for first in range(0, count, batch):
        store.append(
            [
                refused_content(
                    time=START + timedelta(seconds=i),
                    reason="token_expired",
                    status_code="UNAUTHENTICATED",
                    message="the token expired",
                    client_address="ipv4:10.0.0.7:41234",
                    namespace=f"ns-{i % NAMESPACES}",
                    service_account="sa",
                )
                for i in range(first, min(first + batch, count))
            ]
        )
    store.dispose()
    signer = Ledger(
        LedgerStore(url),
        key=load_or_create_ledger_key(state / KEY_FILE),
        clock=FakeClock(START + timedelta(seconds=count)),
        publishers=[HeadFile(state / HEAD_FILE).publish],
    )
    signer.close()  # signs the head: a checkpoint in the database and the head file


@pytest.fixture(scope="module")
def large_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("progress") / "state"
    write_ledger(state, ENTRIES)
    return state


@dataclass(frozen=True)
class Run:
    code: int
    stdout: bytes
    stderr: bytes  # what the terminal or the pipe received


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    env.update(TERM="xterm-256color", COLUMNS="140")
    env.pop("NO_COLOR", None)
    env.update(changes)
    return env


def run_on_terminal(argv: Sequence[str], out: Path, *, program: Sequence[str] = MESHCA, **env: str) -> Run:
    """The command with stderr on a pseudo-terminal; returns everything the terminal got."""
    controller, terminal = os.openpty()
    with out.open("wb") as stdout:
        child = subprocess.Popen(
            [*program, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=terminal,
            env=_env(**env),
        )
    os.close(terminal)
    screen = bytearray()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not chunk:
                break
            screen += chunk
        code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(controller)
        if child.poll() is None:
            child.kill()
            child.wait()
    return Run(code, out.read_bytes(), bytes(screen))


def plain(screen: bytes) -> str:
    """What the terminal shows, without its control sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))


def run_in_pipe(argv: Sequence[str], out: Path, **env: str) -> Run:
    with out.open("wb") as stdout:
        done = subprocess.run(
            [*MESHCA, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=_env(**env),
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    return Run(done.returncode, out.read_bytes(), done.stderr)


SINCE = START + timedelta(seconds=1_000)
# Each command, the label of its bar, and the total it counts to.
COMMANDS = {
    "verify": (["verify"], "verifying", ENTRIES),
    "export": (["export"], "exporting", ENTRIES),
    # Matches from seq 1,001 on: more than a third of the ledger, so the table is walked from
    # the first match, and the bar counts the positions from there.
    "export csv --since": (
        ["export", "--format", "csv", "--since", SINCE.strftime("%Y-%m-%dT%H:%M:%SZ")],
        "exporting",
        ENTRIES - 1_000,
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_terminal_shows_progress_and_a_pipe_none_with_the_same_output(
    large_state: Path, tmp_path: Path, command: str
) -> None:
    argv, label, total = COMMANDS[command]
    argv = [*argv, "--state-dir", str(large_state)]
    shown = run_on_terminal(argv, tmp_path / "terminal.out")
    piped = run_in_pipe(argv, tmp_path / "pipe.out")
    assert (shown.code, piped.code) == (0, 0), (shown, piped.stderr)
    assert piped.stderr == b""
    assert shown.stdout == piped.stdout and shown.stdout
    screen = plain(shown.stderr)
    assert label in screen, screen
    assert f"{total:,}/{total:,} entries" in screen, screen
    assert re.search(r" [1-9][0-9,]*/s ", screen) and "ETA" in screen, screen


def test_export_through_an_index_reports_the_entries_found(large_state: Path) -> None:
    """A fifth of the ledger: the plan takes the namespace index and knows its matches."""
    reader = open_reader(sqlite_url(large_state / "ledger.db"))
    heard: list[tuple[int, int]] = []
    try:
        exported = list(
            queries.export(
                reader,
                AuditFilter(namespace="ns-1"),
                progress=lambda *p: heard.append(p),
                progress_every=1000,
            )
        )
    finally:
        reader.dispose()
    assert len(exported) == ENTRIES // NAMESPACES
    # Read in batches of EXPORT_BATCH (2,000): reported at the first batch end past each 1,000.
    assert heard == [(2000, ENTRIES // NAMESPACES), (ENTRIES // NAMESPACES, ENTRIES // NAMESPACES)]


@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--quiet"], {}), (["-q"], {}), ([], {"TERM": "dumb"})],
    ids=["--quiet", "-q", "TERM=dumb"],
)
def test_no_progress_when_asked_for_none(
    large_state: Path, tmp_path: Path, flags: list[str], env: dict[str, str]
) -> None:
    run = run_on_terminal(["verify", *flags, "--state-dir", str(large_state)], tmp_path / "out", **env)
    assert run.code == 0 and run.stdout.startswith(b"ledger OK: 12500 entries")
    assert run.stderr == b""


def test_a_short_run_draws_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_ledger(state, 50)
    for action in ("verify", "export"):
        run = run_on_terminal([action, "--state-dir", str(state)], tmp_path / f"{action}.out")
        assert run.code == 0 and run.stdout
        assert run.stderr == b"", run.stderr


def test_a_short_run_on_a_terminal_does_not_import_rich(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_ledger(state, 50)
    audit_then_list_rich = (
        "import sys; from ca.cli.main import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich')); sys.exit(code)"
    )
    run = run_on_terminal(
        ["audit", "verify", "--state-dir", str(state)],
        tmp_path / "out",
        program=[sys.executable, "-c", audit_then_list_rich],
    )
    assert run.code == 0 and run.stdout.endswith(b"\n[]\n"), run.stdout


def test_export_reports_positions_walked_up_to_the_last_entry(large_state: Path) -> None:
    reader = open_reader(sqlite_url(large_state / "ledger.db"))
    heard: list[tuple[int, int]] = []
    try:
        count = sum(
            1
            for _ in queries.export(
                reader, AuditFilter(), progress=lambda *p: heard.append(p), progress_every=4000
            )
        )
    finally:
        reader.dispose()
    assert count == ENTRIES
    # Batches of EXPORT_BATCH (2,000): the first report at or past each 4,000.
    assert heard == [(4000, ENTRIES), (8000, ENTRIES), (12000, ENTRIES), (ENTRIES, ENTRIES)]
