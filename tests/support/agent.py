"""Run the workload agent for end-to-end tests: in-process (build_agent) or as `meshca agent`."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from ca.agent.runner import AgentProcess, build_agent
from ca.agent.settings import AgentConfig, agent_config
from ca.agent.svid import Svid
from ca.cli.main import build_parser
from ca.common.clock import Clock
from tests.support.clock import FakeClock

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class LiveClock(FakeClock):
    """The wall clock, for a CA whose certificates must age along with the agent's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@contextlib.contextmanager
def short_dir(prefix: str) -> Iterator[Path]:
    """A directory under /tmp, so Unix socket paths stay well under 100 characters."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def local_http_get(port: int, path: str) -> tuple[int, str]:
    """GET `path` from 127.0.0.1:`port`: the status and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # polled conditions may fail until they hold
            last_error = err
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})"
            )
        time.sleep(interval)


def agent_args(
    *,
    ca_port: int,
    ca_root: Path,
    token_file: Path,
    output_dir: Path,
    sds_socket: Path | None = None,
    workload_api_socket: Path | None = None,
    health: bool = True,
    ttl: str = "24h",
    extra: Sequence[str] = (),
) -> list[str]:
    """Arguments for `meshca agent` (without the leading `agent`)."""
    return [
        "--ca-addr",
        f"127.0.0.1:{ca_port}",
        "--ca-root",
        str(ca_root),
        "--ca-server-name",
        "localhost",
        "--token-file",
        str(token_file),
        "--output-dir",
        str(output_dir),
        "--ttl",
        ttl,
        "--sds-socket",
        str(sds_socket) if sds_socket else "off",
        "--workload-api-socket",
        str(workload_api_socket) if workload_api_socket else "off",
        "--health-listen",
        "127.0.0.1:0" if health else "off",
        *extra,
    ]


def parse_agent_config(args: Sequence[str]) -> AgentConfig:
    """The AgentConfig the real `meshca agent` flag parser makes of these arguments."""
    return agent_config(build_parser({}).parse_args(["agent", *args]))


@dataclass
class RunningAgent:
    process: AgentProcess

    @property
    def cfg(self) -> AgentConfig:
        return self.process.cfg

    @property
    def current(self) -> Svid | None:
        return self.process.agent.current

    @property
    def serial(self) -> int | None:
        svid = self.current
        return svid.leaf.serial_number if svid is not None else None

    @property
    def health_port(self) -> int:
        assert self.process.telemetry is not None, "the agent was started without --health-listen"
        return self.process.telemetry.port

    def wait_for_svid(self, timeout: float = 10.0, *, not_serial: int | None = None) -> Svid:
        def fresh() -> Svid | None:
            svid = self.current
            if svid is None or svid.leaf.serial_number == not_serial:
                return None
            return svid

        return wait_until(fresh, timeout, f"an SVID from the agent (other than serial {not_serial})")

    def http_get(self, path: str) -> tuple[int, str]:
        return local_http_get(self.health_port, path)

    def metrics(self) -> dict[str, float]:
        """Samples from /metrics keyed by `name{labels}` as printed."""
        status, body = self.http_get("/metrics")
        assert status == 200, body
        samples: dict[str, float] = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            match = re.match(r"^(\S+?(?:\{.*\})?)\s+(\S+)$", line)
            if match:
                samples[match.group(1)] = float(match.group(2))
        return samples

    def stop(self) -> None:
        self.process.stop()


def start_agent(args: Sequence[str], clock: Clock | None = None) -> RunningAgent:
    process = build_agent(parse_agent_config(args), clock)
    running = RunningAgent(process)
    try:
        process.start()
    except BaseException:
        process.stop()
        raise
    return running


def run_agent_cli(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m ca.cli.main agent ARGS` to completion (for --once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "ca.cli", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
