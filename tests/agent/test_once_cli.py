"""`meshca agent` as a real process against a real CA: `--once on` waits for a CA that comes up
after it, names a --ca-root that does not match the CA in one line (exit 2), and a running
agent's log lines come out as they happen."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import REPO, LiveClock, agent_args, run_agent_cli, short_dir, wait_until
from tests.support.ca_server import RunningCa, start_ca
from tests.support.ports import reserved_port

pytestmark = pytest.mark.slow


@dataclass
class CaState:
    """A CA's state directory (root and development token signer) with no CA running on it."""

    state: Path
    token_file: Path

    @property
    def root(self) -> Path:
        return self.state / "root-cert.pem"


@pytest.fixture
def ca_state() -> Iterator[CaState]:
    with short_dir("mca-once-") as base:
        ca = start_ca(base / "state", clock=LiveClock())
        token_file = base / "token"
        token_file.write_text(ca.token(namespace="shop", service_account="init"))
        ca.stop(grace_s=0)
        yield CaState(state=base / "state", token_file=token_file)


def once_args(state: CaState, port: int, *extra: str) -> list[str]:
    return agent_args(
        ca_port=port,
        ca_root=state.root,
        token_file=state.token_file,
        output_dir=state.state.parent / "certs",
        health=False,
        extra=["--once", "on", *extra],
    )


@contextlib.contextmanager
def hanging_up(port: int) -> Iterator[list[int]]:
    """Listen on `port` and close each connection at once, as a CA that is not up yet; yields a
    list that grows by one per connection."""
    accepted: list[int] = []
    stop = threading.Event()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    server.settimeout(0.05)

    def hang_up() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                server.accept()[0].close()
                accepted.append(1)

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        yield accepted
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_once_waits_for_a_ca_that_starts_after_it(ca_state: CaState) -> None:
    with reserved_port() as port:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
        agent = subprocess.Popen(
            [sys.executable, "-m", "ca.cli", "agent", *once_args(ca_state, port)],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stderr=subprocess.PIPE,
            text=True,
        )
        ca: RunningCa | None = None
        try:
            with hanging_up(port) as accepted:
                wait_until(lambda: accepted, 30, "the agent's first attempt")
            # That attempt failed: a one-attempt agent exits now. Start the CA on the port.
            ca = start_ca(ca_state.state, "--listen", f"127.0.0.1:{port}", clock=LiveClock())
            _, stderr = agent.communicate(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            if ca is not None:
                ca.stop(grace_s=0)
    assert agent.returncode == 0, stderr
    assert (ca_state.state.parent / "certs" / "cert-chain.pem").exists()
    lines = [json.loads(line) for line in stderr.splitlines()]
    messages = [line["msg"] for line in lines]
    assert "certificate request failed" in messages, stderr  # its log is written once it succeeds
    assert messages[-1] == "certificate issued" and "certificate rotated" not in messages, messages
    assert lines[-1]["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/init"


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    ca = start_ca(tmp_path_factory.mktemp("other-ca"), clock=LiveClock())
    try:
        yield ca
    finally:
        ca.stop()


def test_once_against_a_ca_that_its_ca_root_does_not_match_says_so_in_one_line(
    ca_state: CaState, other_ca: RunningCa
) -> None:
    """The agent trusts ca_state's root; the CA that answers is another one."""
    result = run_agent_cli(once_args(ca_state, other_ca.port), timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"meshca: error: no certificate written: the CA at 127.0.0.1:{other_ca.port} presents a "
        f"certificate that does not chain to the root(s) in --ca-root {ca_state.root} (unable to get "
        "local issuer certificate); set --ca-root to this CA's root-cert.pem (in its state directory, "
        "or the istio-ca-root-cert ConfigMap in a cluster)\n"
    )


def test_a_running_agent_writes_its_log_lines_as_they_happen(ca_state: CaState) -> None:
    """Only a start's lines are held: a running agent's failed attempts are logged while it runs."""
    log_path = ca_state.state.parent / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    with reserved_port() as port, log_path.open("w") as log_file:
        args = agent_args(
            ca_port=port,
            ca_root=ca_state.root,
            token_file=ca_state.token_file,
            output_dir=ca_state.state.parent / "certs",
            health=False,
        )
        agent = subprocess.Popen(
            [sys.executable, "-m", "ca.cli", "agent", *args],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stderr=log_file,
        )
        try:
            wait_until(
                lambda: "certificate request failed" in log_path.read_text(),
                30,
                "a failed attempt in the running agent's log",
            )
            assert agent.poll() is None
            agent.terminate()
            assert agent.wait(timeout=20) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    first = json.loads(log_path.read_text().splitlines()[0])
    assert first["msg"] == "certificate request failed" and first["reason"] == "unavailable", first
